// Package keys keeps the node's WireGuard private key: generated once,
// stored 0600 in a 0700 state directory, reused across restarts. The key is
// wrapped so that formatting or logging it prints only the public half.
package keys

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/nodefile"
)

// FileName is the private key's file name inside the state directory.
const FileName = "privatekey"

// Private holds a WireGuard private key. Its String and LogValue show the
// public key only, so an accidental %v or slog attribute cannot leak it.
type Private struct{ k wgtypes.Key }

// Key returns the raw key, for handing to wgctrl only.
func (p Private) Key() wgtypes.Key { return p.k }

// Public returns the public key.
func (p Private) Public() wgtypes.Key { return p.k.PublicKey() }

// String implements fmt.Stringer without revealing the private key.
func (p Private) String() string { return "private key of " + p.Public().String() }

// GoString keeps %#v from dumping the key bytes.
func (p Private) GoString() string { return p.String() }

// LogValue implements slog.LogValuer.
func (p Private) LogValue() slog.Value { return slog.StringValue(p.String()) }

// LoadOrCreate returns the key stored in stateDir, creating the directory
// (0700) and the key (0600) on first use. Permissions wider than that are
// tightened, since a readable key lets anyone impersonate the node.
func LoadOrCreate(stateDir string) (Private, bool, error) {
	if err := ensureDir(stateDir); err != nil {
		return Private{}, false, err
	}
	path := filepath.Join(stateDir, FileName)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		fi, err := os.Stat(path)
		if err != nil {
			return Private{}, false, fmt.Errorf("stat private key %s: %w", path, err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(path, 0o600); err != nil {
				return Private{}, false, fmt.Errorf("tighten permissions of private key %s: %w", path, err)
			}
		}
		k, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
		if err != nil {
			// Do not include the file contents: they may be a key.
			return Private{}, false, fmt.Errorf("private key file %s is not a base64 WireGuard key; remove it to generate a new one", path)
		}
		return Private{k}, false, nil
	case errors.Is(err, os.ErrNotExist):
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return Private{}, false, fmt.Errorf("generate private key: %w", err)
		}
		if err := nodefile.WriteFileAtomic(path, []byte(k.String()+"\n"), 0o600); err != nil {
			return Private{}, false, fmt.Errorf("store private key: %w", err)
		}
		return Private{k}, true, nil
	default:
		return Private{}, false, fmt.Errorf("read private key %s: %w", path, err)
	}
}

func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("stat state dir %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state dir %s is not a directory", dir)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("set state dir %s to 0700: %w", dir, err)
		}
	}
	return nil
}

// Rotate generates a new private key and stores it in place of the old one
// (atomically, 0600). The file is written before the device or etcd see
// the new key, so a crash at any later point restarts with the new key and
// the restarted daemon configures and publishes it. The old key is not kept.
func Rotate(stateDir string) (Private, error) {
	if err := ensureDir(stateDir); err != nil {
		return Private{}, err
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return Private{}, fmt.Errorf("generate private key: %w", err)
	}
	if err := nodefile.WriteFileAtomic(filepath.Join(stateDir, FileName), []byte(k.String()+"\n"), 0o600); err != nil {
		return Private{}, fmt.Errorf("store rotated private key: %w", err)
	}
	return Private{k}, nil
}
