// Package pqkeys keeps the node's static ML-KEM-768 key pair, the
// post-quantum half of its identity: generated once, stored 0600 in the
// 0700 state directory next to the WireGuard key (daemon/keys), reused
// across restarts. Only the encapsulation (public) key leaves the node, in
// the node's etcd record, encoded by EncodePublic and checked by
// ParsePublic. The decapsulation key is wrapped so that formatting or
// logging it prints only a fingerprint of the public half.
package pqkeys

import (
	"crypto/mlkem"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/wgcni/wgcni/daemon/nodefile"
)

// FileName is the decapsulation key's file name inside the state directory.
// It holds the 64-byte seed form (FIPS 203 d||z), base64 encoded.
const FileName = "mlkem768.key"

// PublicSize is the size of an ML-KEM-768 encapsulation key in bytes.
const PublicSize = mlkem.EncapsulationKeySize768

// Private is the node's ML-KEM-768 decapsulation key. Its String,
// GoString, Format and LogValue show the public fingerprint only, so that
// no verb, %#v or slog attribute can print the seed.
type Private struct{ dk *mlkem.DecapsulationKey768 }

// Decapsulation returns the key for decapsulating, for the key exchange only.
func (p Private) Decapsulation() *mlkem.DecapsulationKey768 { return p.dk }

// Public returns the encapsulation key that peers encapsulate to.
func (p Private) Public() *mlkem.EncapsulationKey768 { return p.dk.EncapsulationKey() }

// String implements fmt.Stringer without revealing the private key.
func (p Private) String() string {
	if p.dk == nil {
		return "ML-KEM-768 private key (unset)"
	}
	return "ML-KEM-768 private key of " + Fingerprint(p.Public())
}

// GoString keeps %#v from dumping the key.
func (p Private) GoString() string { return p.String() }

// Format implements fmt.Formatter: every verb (%d, %x included, which
// would otherwise walk the struct) prints String.
func (p Private) Format(f fmt.State, _ rune) { fmt.Fprint(f, p.String()) }

// LogValue implements slog.LogValuer.
func (p Private) LogValue() slog.Value { return slog.StringValue(p.String()) }

// Fingerprint is a short, printable name of an encapsulation key for logs
// and errors: the first 8 bytes of its SHA-256, in hex. It is public data.
func Fingerprint(ek *mlkem.EncapsulationKey768) string {
	if ek == nil {
		return "mlkem768:none"
	}
	sum := sha256.Sum256(ek.Bytes())
	return "mlkem768:" + hex.EncodeToString(sum[:8])
}

// EncodePublic is the encapsulation key as published in the etcd record:
// standard base64 of its 1184 bytes.
func EncodePublic(ek *mlkem.EncapsulationKey768) string {
	return base64.StdEncoding.EncodeToString(ek.Bytes())
}

// ParsePublic decodes a published encapsulation key. It checks the
// encoding, the exact length and the key's validity (FIPS 203 modulus
// check). The record check (CheckPublic) covers only the encoding; this
// runs where the key is used. The error never quotes the input (it is
// public, but may be long and arbitrary).
func ParsePublic(s string) (*mlkem.EncapsulationKey768, error) {
	b, err := decodePublic(s)
	if err != nil {
		return nil, err
	}
	ek, err := mlkem.NewEncapsulationKey768(b)
	if err != nil {
		return nil, errors.New("ML-KEM-768 public key: not a valid encapsulation key")
	}
	return ek, nil
}

// CheckPublic checks a published key's encoding (length, strict base64)
// without building the key: ~3 µs against ParsePublic's ~35 µs, which
// matters when a node reads thousands of records at start and most of it
// never needs the key (post-quantum off). ParsePublic, where the key is
// used, adds FIPS 203's modulus check.
func CheckPublic(s string) error {
	_, err := decodePublic(s)
	return err
}

func decodePublic(s string) ([]byte, error) {
	if len(s) != base64.StdEncoding.EncodedLen(PublicSize) {
		return nil, fmt.Errorf("ML-KEM-768 public key: %d base64 characters, want %d", len(s), base64.StdEncoding.EncodedLen(PublicSize))
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, errors.New("ML-KEM-768 public key: not standard base64")
	}
	if len(b) != PublicSize {
		return nil, fmt.Errorf("ML-KEM-768 public key: %d bytes, want %d", len(b), PublicSize)
	}
	return b, nil
}

// LoadOrCreate returns the key pair stored in stateDir, creating the
// directory (0700) and the key file (0600, atomically) on first use. It
// reports whether the key was created. Unlike the WireGuard key, a key file
// or state directory open to group or others is refused rather than
// tightened: a post-quantum key that may have been read is no longer a
// secret, and the operator must decide (remove it to generate a new one).
func LoadOrCreate(stateDir string) (Private, bool, error) {
	if err := checkDir(stateDir); err != nil {
		return Private{}, false, err
	}
	path := filepath.Join(stateDir, FileName)
	seed, err := readSecret(path)
	if errors.Is(err, os.ErrNotExist) {
		p, err := create(path)
		return p, err == nil, err
	}
	if err != nil {
		return Private{}, false, err
	}
	defer clear(seed)
	// Never quote the contents in an error: they may be a key.
	raw, err := base64.StdEncoding.Strict().DecodeString(strings.TrimSpace(string(seed)))
	defer clear(raw)
	if err != nil || len(raw) != mlkem.SeedSize {
		return Private{}, false, fmt.Errorf("ML-KEM key file %s is not a base64 %d-byte ML-KEM-768 seed; remove it to generate a new one", path, mlkem.SeedSize)
	}
	dk, err := mlkem.NewDecapsulationKey768(raw)
	if err != nil {
		return Private{}, false, fmt.Errorf("ML-KEM key file %s holds an invalid seed; remove it to generate a new one", path)
	}
	return Private{dk}, false, nil
}

// maxKeyFile bounds what readSecret reads: a seed is 89 base64 bytes.
const maxKeyFile = 4096

// readSecret reads a key file that must be a regular file (not a link)
// readable by its owner only. Mode and contents come from the same open
// file, so the file checked is the file read.
func readSecret(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("open ML-KEM key %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil:
		return nil, fmt.Errorf("stat ML-KEM key %s: %w", path, err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("ML-KEM key %s is not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("ML-KEM key %s has mode %o, open to group or others; refusing to use it (remove it to generate a new one)", path, fi.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile))
	if err != nil {
		return nil, fmt.Errorf("read ML-KEM key %s: %w", path, err)
	}
	return b, nil
}

// create generates a key pair and stores its seed at path.
func create(path string) (Private, error) {
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		return Private{}, fmt.Errorf("generate ML-KEM-768 key: %w", err)
	}
	seed := dk.Bytes()
	defer clear(seed)
	if err := nodefile.WriteFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(seed)+"\n"), 0o600); err != nil {
		return Private{}, fmt.Errorf("store ML-KEM key: %w", err)
	}
	return Private{dk}, nil
}

// checkDir creates dir (0700) if missing and refuses one that is not a
// directory or is open to group or others.
func checkDir(dir string) error {
	err := os.MkdirAll(dir, 0o700)
	var fi os.FileInfo
	if err == nil {
		fi, err = os.Stat(dir)
	}
	switch {
	case err != nil:
		return fmt.Errorf("state dir %s: %w", dir, err)
	case !fi.IsDir():
		return fmt.Errorf("state dir %s is not a directory", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("state dir %s has mode %o, want 0700; refusing to keep the ML-KEM key there", dir, fi.Mode().Perm())
	}
	return nil
}
