package cniconf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const conflist = `{"cniVersion":"1.0.0","name":"wgcni","plugins":[{"type":"wgcni","ipam":{"type":"wgcni-ipam"}}]}`

func TestInstall(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src      string // empty: the file does not exist
		existing string // what the config dir holds before; empty: nothing
		written  bool
		err      string
	}{
		{name: "fresh node", src: conflist, written: true},
		{name: "same bytes already there", src: conflist, existing: conflist, written: false},
		{name: "older version replaced", src: conflist, existing: `{"old":true}`, written: true},
		{name: "not a conflist", src: `{"cniVersion":"1.0.0","name":"x"}`, err: "CNI conflist"},
		{name: "broken JSON", src: `{"cniVersion":`, err: "CNI conflist"},
		{name: "missing source", err: "read CNI conflist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srcDir, dir := t.TempDir(), filepath.Join(t.TempDir(), "net.d")
			src := filepath.Join(srcDir, "10-wgcni.conflist")
			if tc.src != "" {
				if err := os.WriteFile(src, []byte(tc.src), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			dst := filepath.Join(dir, "10-wgcni.conflist")
			if tc.existing != "" {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(dst, []byte(tc.existing), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			written, err := Install(src, dir)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one containing %q", err, tc.err)
				}
				got, _ := os.ReadFile(dst)
				if string(got) != tc.existing {
					t.Errorf("a bad source changed the installed conflist to %q", got)
				}
				return
			}
			if err != nil || written != tc.written {
				t.Fatalf("Install: written %v, err %v; want written %v", written, err, tc.written)
			}
			got, err := os.ReadFile(dst)
			if err != nil || string(got) != tc.src {
				t.Errorf("installed %q (%v), want %q", got, err, tc.src)
			}
			st, err := os.Stat(dst)
			if err != nil || st.Mode().Perm() != 0o644 {
				t.Errorf("mode %v (%v), want 0644: the runtime reads it", st.Mode(), err)
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Errorf("config dir holds %d entries, want only the conflist (no temporary file left)", len(ents))
			}
		})
	}
}
