package pqkeys

import (
	"bytes"
	"crypto/mlkem"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// perm returns the permission bits of path.
func perm(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestCreatedOnceThenReused: the first call creates dir and key with
// owner-only modes, later calls return the same usable key pair.
func TestCreatedOnceThenReused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	first, created, err := LoadOrCreate(dir)
	if err != nil || !created {
		t.Fatalf("first call: created=%v err=%v", created, err)
	}
	if perm(t, dir) != 0o700 || perm(t, filepath.Join(dir, FileName)) != 0o600 {
		t.Fatalf("modes: dir %o, key %o", perm(t, dir), perm(t, filepath.Join(dir, FileName)))
	}
	again, created, err := LoadOrCreate(dir)
	if err != nil || created {
		t.Fatalf("second call: created=%v err=%v", created, err)
	}
	if !bytes.Equal(first.Decapsulation().Bytes(), again.Decapsulation().Bytes()) || !bytes.Equal(first.Public().Bytes(), again.Public().Bytes()) {
		t.Fatal("the key changed between calls")
	}
	// The stored pair works: what is encapsulated to the public key
	// decapsulates with the reloaded private key.
	shared, ct := first.Public().Encapsulate()
	if got, err := again.Decapsulation().Decapsulate(ct); err != nil || !bytes.Equal(shared, got) {
		t.Fatalf("decapsulate with the reloaded key: %v", err)
	}
	// No temp file is left beside the key.
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("state dir holds %d entries, want only %s", len(ents), FileName)
	}
}

// TestRefusesSymlink: the key file must be the file itself, not a link to
// one somewhere else.
func TestRefusesSymlink(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	if _, _, err := LoadOrCreate(src); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	os.Mkdir(dir, 0o700)
	os.Symlink(filepath.Join(src, FileName), filepath.Join(dir, FileName))
	if _, _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), FileName) {
		t.Fatalf("symlinked key: err = %v", err)
	}
}

func TestRefusesReadableKeyAndDir(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	if _, _, err := LoadOrCreate(dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	before, _ := os.ReadFile(path)
	os.Chmod(path, 0o644)
	_, _, err := LoadOrCreate(dir)
	if err == nil || !strings.Contains(err.Error(), FileName) || !strings.Contains(err.Error(), "644") {
		t.Fatalf("world-readable key: err = %v", err)
	}
	after, _ := os.ReadFile(path)
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 || !bytes.Equal(before, after) {
		t.Fatal("a refused key file must be left unchanged")
	}
	os.Chmod(path, 0o600)
	os.Chmod(dir, 0o755)
	if _, _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "state dir") {
		t.Fatalf("0755 state dir: err = %v", err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o600)
	if _, _, err := LoadOrCreate(notDir); err == nil {
		t.Fatal("a file as state dir was accepted")
	}
}

func TestCorruptKeyNotEchoed(t *testing.T) {
	for name, content := range map[string]string{
		"not base64": "not-a-key-but-secret-looking",
		"short seed": base64.StdEncoding.EncodeToString([]byte("secret-looking-but-32-bytes-long")),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			os.Chmod(dir, 0o700)
			os.WriteFile(filepath.Join(dir, FileName), []byte(content), 0o600)
			_, _, err := LoadOrCreate(dir)
			if err == nil || strings.Contains(err.Error(), content) || !strings.Contains(err.Error(), FileName) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestNeverPrinted(t *testing.T) {
	k, _, err := LoadOrCreate(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	seed := k.Decapsulation().Bytes()
	secrets := []string{base64.StdEncoding.EncodeToString(seed), fmt.Sprintf("%x", seed), fmt.Sprint(seed)}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "key", k)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "key", k)
	out := fmt.Sprintf("%v %+v %#v %s %x %X %d %q", k, k, k, k, k, k, k, k) + fmt.Sprint(&k) + buf.String()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatalf("private key printed: %s", out)
		}
	}
	if !strings.Contains(out, Fingerprint(k.Public())) {
		t.Fatalf("public fingerprint not shown: %s", out)
	}
}

func TestPublicRoundTrip(t *testing.T) {
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		t.Fatal(err)
	}
	s := EncodePublic(dk.EncapsulationKey())
	ek, err := ParsePublic(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ek.Bytes(), dk.EncapsulationKey().Bytes()) {
		t.Fatal("round trip changed the key")
	}
}

func TestParsePublicRejects(t *testing.T) {
	dk, _ := mlkem.GenerateKey768()
	good := dk.EncapsulationKey().Bytes()
	// A coefficient of 0xfff (>= q = 3329) fails FIPS 203's modulus check.
	badModulus := bytes.Clone(good)
	badModulus[0], badModulus[1] = 0xff, 0x0f
	for name, in := range map[string]string{
		"empty":       "",
		"short":       base64.StdEncoding.EncodeToString(good[:100]),
		"long":        base64.StdEncoding.EncodeToString(append(bytes.Clone(good), 0)),
		"not base64":  strings.Repeat("*", base64.StdEncoding.EncodedLen(PublicSize)),
		"url base64":  strings.Repeat("_", base64.StdEncoding.EncodedLen(PublicSize)),
		"bad modulus": base64.StdEncoding.EncodeToString(badModulus),
		"wg key size": base64.StdEncoding.EncodeToString(good[:32]),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParsePublic(in); err == nil || !strings.Contains(err.Error(), "ML-KEM-768 public key") {
				t.Fatalf("accepted or unclear: %v", err)
			}
		})
	}
}

func FuzzParsePublic(f *testing.F) {
	dk, _ := mlkem.GenerateKey768()
	f.Add(EncodePublic(dk.EncapsulationKey()))
	f.Add("")
	f.Add(strings.Repeat("A", base64.StdEncoding.EncodedLen(PublicSize)))
	f.Fuzz(func(t *testing.T, s string) {
		ek, err := ParsePublic(s)
		if err != nil {
			if ek != nil {
				t.Fatal("key returned with an error")
			}
			if len(s) > 8 && strings.Contains(err.Error(), s) {
				t.Fatal("error quotes the input")
			}
			return
		}
		// Anything accepted re-encodes to itself and is usable.
		if EncodePublic(ek) != s {
			t.Fatal("accepted input does not round-trip")
		}
		if _, ct := ek.Encapsulate(); len(ct) != mlkem.CiphertextSize768 {
			t.Fatal("accepted key cannot encapsulate")
		}
	})
}
