package keys

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	k1, created, err := LoadOrCreate(dir)
	if err != nil || !created {
		t.Fatalf("first load: created=%v err=%v", created, err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, FileName): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %o, want %o", path, fi.Mode().Perm(), want)
		}
	}
	k2, created, err := LoadOrCreate(dir)
	if err != nil || created {
		t.Fatalf("second load: created=%v err=%v", created, err)
	}
	if k1.Key() != k2.Key() {
		t.Fatal("key changed across loads")
	}
}

func TestTightensPermissions(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := LoadOrCreate(dir); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Join(dir, FileName), 0o644)
	if _, _, err := LoadOrCreate(dir); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(dir, FileName))
	di, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Fatalf("modes %o %o", fi.Mode().Perm(), di.Mode().Perm())
	}
}

func TestCorruptKeyNotEchoed(t *testing.T) {
	dir := t.TempDir()
	secret := "not-a-key-but-secret-looking"
	os.WriteFile(filepath.Join(dir, FileName), []byte(secret), 0o600)
	_, _, err := LoadOrCreate(dir)
	if err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), FileName) {
		t.Fatalf("err = %v", err)
	}
}

func TestNeverPrinted(t *testing.T) {
	k, _, err := LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	priv := k.Key().String()
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "key", k)
	out := fmt.Sprintf("%v %+v %#v %s", k, k, k, k) + buf.String()
	if strings.Contains(out, priv) {
		t.Fatalf("private key printed: %s", out)
	}
	if !strings.Contains(out, k.Public().String()) {
		t.Fatalf("public key not shown: %s", out)
	}
}
