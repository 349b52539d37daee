package harness

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Secret is a key that must never appear in anything a run produces.
type Secret struct {
	Name  string // e.g. "WireGuard key #2"; printed, the key never is
	Bytes []byte
}

// SecretHit is where a secret was found, and in which encoding.
type SecretHit struct{ Where, What string }

// SecretSearch looks for secrets, as base64 (padded or not), hex (both
// cases) and raw bytes, in outputs and in every regular file under dirs
// (logs, etcd's data files, node and status files), except the files
// keep says are where a secret belongs.
type SecretSearch struct {
	Secrets []Secret
	Keep    func(path string) bool
	Scanned int // bytes searched
	Files   int
	Hits    []SecretHit
}

// Check searches one output.
func (s *SecretSearch) Check(where string, data []byte) {
	s.Scanned += len(data)
	for _, k := range s.Secrets {
		b64 := base64.StdEncoding.EncodeToString(k.Bytes)
		forms := map[string][]byte{
			"base64":       []byte(b64),
			"base64-nopad": []byte(strings.TrimRight(b64, "=")),
			"hex":          []byte(hex.EncodeToString(k.Bytes)),
			"HEX":          []byte(strings.ToUpper(hex.EncodeToString(k.Bytes))),
			"raw":          k.Bytes,
		}
		for form, b := range forms {
			if bytes.Contains(data, b) {
				s.Hits = append(s.Hits, SecretHit{where, fmt.Sprintf("%s as %s", k.Name, form)})
			}
		}
	}
}

// Walk searches every regular file under dir.
func (s *SecretSearch) Walk(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() || s.Keep != nil && s.Keep(path) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		s.Files++
		s.Check(path, b)
		return nil
	})
}

// Works reports whether the search finds a planted secret (it must, or
// an empty result means nothing).
func (s *SecretSearch) Works() bool {
	if len(s.Secrets) == 0 {
		return false
	}
	probe := SecretSearch{Secrets: s.Secrets[:1]}
	probe.Check("planted", []byte("x"+base64.StdEncoding.EncodeToString(s.Secrets[0].Bytes)+"y"))
	return len(probe.Hits) > 0
}
