package heal

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/wgcni/wgcni/daemon/nodefile"
)

// State is the state file: what `wgcnictl peers` shows next to the device.
type State struct {
	Updated   time.Time    `json:"updated"`
	DeviceMTU int          `json:"deviceMTU"`
	Peers     []PeerStatus `json:"peers"`
}

// StateFile is the state file's path in the run directory.
func StateFile(runDir string) string { return filepath.Join(runDir, "peers.json") }

// WriteState writes s to path atomically.
func WriteState(path string, s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return nodefile.WriteFileAtomic(path, append(b, '\n'), 0o644)
}

// ReadState reads the state file at path.
func ReadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}
