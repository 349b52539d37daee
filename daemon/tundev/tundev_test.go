package tundev

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mknodTUN makes a TUN clone device node with the given mode and group in
// a temporary directory (the test's own node, whatever the host's is).
func mknodTUN(t *testing.T, mode uint32, gid int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mknod)")
	}
	p := filepath.Join(t.TempDir(), "tun")
	if err := unix.Mknod(p, unix.S_IFCHR|mode, int(unix.Mkdev(major, minor))); err != nil {
		t.Fatalf("mknod %s: %v", p, err)
	}
	// mknod applies the umask; set exactly what the case wants.
	if err := os.Chmod(p, fs.FileMode(mode)|fs.ModeDevice|fs.ModeCharDevice); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 0, gid); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGrantGroup(t *testing.T) {
	const daemonGID = 65534
	cases := []struct {
		name      string
		mode      uint32
		gid       int
		wantPerm  fs.FileMode
		wantGID   int
		wantDid   string // substring of what GrantGroup reports; "" = nothing done
		wantError string
	}{
		{"0600 root:root (devtmpfs, containers)", 0o600, 0, 0o660, daemonGID, "mode 0600 -> 0660", ""},
		{"0666 (udev on a desktop) is left alone", 0o666, 0, 0o666, 0, "", ""},
		{"already the daemon's group", 0o660, daemonGID, 0o660, daemonGID, "", ""},
		{"the daemon's group without rw", 0o600, daemonGID, 0o660, daemonGID, "mode 0600 -> 0660", ""},
		{"another group's node is not taken", 0o660, 4242, 0o660, 4242, "", "belongs to group"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := mknodTUN(t, c.mode, c.gid)
			did, err := GrantGroup(p, daemonGID)
			if c.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantError) || !strings.Contains(err.Error(), p) {
					t.Fatalf("GrantGroup: %v, want an error naming %s and containing %q", err, p, c.wantError)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if c.wantDid == "" && did != "" || !strings.Contains(did, c.wantDid) {
				t.Errorf("GrantGroup reported %q, want %q", did, c.wantDid)
			}
			info, err := Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if info.Mode.Perm() != c.wantPerm || info.GID != c.wantGID || !info.IsTUN() {
				t.Errorf("after GrantGroup: %s gid %d, want perm %#o gid %d", info, info.GID, c.wantPerm, c.wantGID)
			}
			// Idempotent: a second call changes nothing.
			if again, err := GrantGroup(p, daemonGID); c.wantError == "" && (err != nil || again != "") {
				t.Errorf("second GrantGroup: %q %v, want no change", again, err)
			}
		})
	}
}

func TestGrantGroupRefusesOtherNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, nil, 0o600)
	null := filepath.Join(dir, "null")
	if err := unix.Mknod(null, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{regular, null} {
		if _, err := GrantGroup(p, 65534); err == nil || !strings.Contains(err.Error(), "not the TUN clone device") {
			t.Errorf("%s: %v, want 'not the TUN clone device'", p, err)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s changed to %v", p, fi.Mode())
		}
	}
	if _, err := GrantGroup(filepath.Join(dir, "missing"), 65534); err == nil || !strings.Contains(err.Error(), "modprobe tun") {
		t.Errorf("missing node: %v, want the fix named", err)
	}
}

func TestExplain(t *testing.T) {
	p := mknodTUN(t, 0o600, 0)
	err := Explain(p, syscall.EACCES)
	if !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("Explain lost the cause: %v", err)
	}
	for _, want := range []string{p + " (crw------- root:root)", "uid ", "tun-access --group", "CAP_NET_ADMIN"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Explain(EACCES) = %q, want it to name %q", err, want)
		}
	}
	missing := filepath.Join(t.TempDir(), "tun")
	if err := Explain(missing, errors.New(`CreateTUN("x") failed; `+missing+` does not exist`)); !strings.Contains(err.Error(), "mknod -m 0600 "+missing+" c 10 200") {
		t.Errorf("Explain(missing) = %v, want the mknod fix", err)
	}
	other := errors.New("device busy")
	if got := Explain(p, other); got != other {
		t.Errorf("Explain(other) = %v, want it unchanged", got)
	}
}
