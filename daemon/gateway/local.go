package gateway

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/wgcni/wgcni/daemon/nodefile"
)

// Local is one site this node sends to another gateway than the elected
// one (or to none), and why: the local file `wgcnictl gateways` shows.
type Local struct {
	Site    string `json:"site"`
	Elected string `json:"elected"`
	Gateway string `json:"gateway"` // "" none: dropped
	Reason  string `json:"reason"`
}

// LocalFile is the local file's path in the run directory.
func LocalFile(runDir string) string { return filepath.Join(runDir, "gateways.json") }

// ReadLocal reads the local file at path.
func ReadLocal(path string) ([]Local, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var l []Local
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

// writeLocal writes the local file when the choices changed (o.mu held).
func (o *Observer) writeLocal() {
	if o.LocalFile == "" {
		return
	}
	l := []Local{}
	for _, s := range o.view.Sorted() {
		elected, reason := o.substitute(s)
		if elected == "" {
			continue
		}
		lc := Local{Site: s.CIDR.String(), Elected: elected, Reason: reason}
		if s.Serving != nil {
			lc.Gateway = s.Serving.Node
		}
		l = append(l, lc)
	}
	if o.localOK && slices.Equal(l, o.local) {
		return
	}
	b, _ := json.MarshalIndent(l, "", "  ")
	o.local = l
	o.localOK = nodefile.WriteFileAtomic(o.LocalFile, append(b, '\n'), 0o644) == nil
	if !o.localOK {
		o.Log.Warn("write local gateway choices", "path", o.LocalFile)
	}
}
