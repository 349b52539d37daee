package ops

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestCommandLine runs every binary the way an operator filing a bug or
// reading the manual does: --version and version print the stamped build,
// help lists wgcnid's commands, each command takes --help, and a wrong
// command is an error naming it.
func TestCommandLine(t *testing.T) {
	repo := harness.Require(t)
	bin := func(name string) string { return filepath.Join(repo, "bin", name) }
	run := func(name string, args ...string) (string, int) {
		out, err := exec.Command(bin(name), args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return string(out), code
	}
	for _, prog := range []string{"wgcnid", "wgcnictl", "wgcni", "wgcni-ipam"} {
		for _, arg := range []string{"--version", "version"} {
			out, code := run(prog, arg)
			line := strings.TrimSpace(out)
			// "wgcnid <version> (go1.x, linux/amd64)": the version is
			// what the Makefile stamped, never empty.
			f := strings.Fields(line)
			if code != 0 || len(f) < 3 || f[0] != prog || !strings.HasPrefix(f[2], "(go") || strings.Contains(line, "\n") {
				t.Errorf("%s %s: exit %d, %q; want one line \"%s <version> (go…)\"", prog, arg, code, out, prog)
			}
		}
		if out, code := run(prog, "--help"); code != 0 || !strings.Contains(out, prog) {
			t.Errorf("%s --help: exit %d\n%s", prog, code, out)
		}
	}

	commands := []string{"run", "cleanup", "rotate-key", "tun-access", "userspace-device", "samenode-host", "etcd-bootstrap", "version", "help"}
	for _, args := range [][]string{{"--help"}, {"help"}, {"-h"}} {
		out, code := run("wgcnid", args...)
		if code != 0 {
			t.Errorf("wgcnid %v: exit %d", args, code)
		}
		for _, c := range commands {
			if !strings.Contains(out, "\n  "+c+" ") {
				t.Errorf("wgcnid %v does not list command %q:\n%s", args, c, out)
			}
		}
	}
	for _, c := range []string{"run", "cleanup", "rotate-key", "tun-access", "etcd-bootstrap"} {
		for _, args := range [][]string{{c, "--help"}, {"help", c}} {
			out, code := run("wgcnid", args...)
			if code != 0 || !strings.Contains(out, "wgcnid "+c) || !strings.Contains(out, "-") {
				t.Errorf("wgcnid %v: exit %d, want the flags of %s:\n%s", args, code, c, out)
			}
		}
	}
	if out, code := run("wgcnid", "run", "--help"); !strings.Contains(out, "-etcd-endpoints") || code != 0 {
		t.Errorf("wgcnid run --help does not list the daemon's flags:\n%s", out)
	}
	if out, code := run("wgcnid", "frobnicate"); code != 2 || !strings.Contains(out, `unknown command "frobnicate"`) {
		t.Errorf("wgcnid frobnicate: exit %d, want 2 and the command named:\n%s", code, out)
	}
	if out, code := run("wgcnictl", "help", "status"); code != 0 || !strings.Contains(out, "wgcnictl status") {
		t.Errorf("wgcnictl help status: exit %d\n%s", code, out)
	}
}
