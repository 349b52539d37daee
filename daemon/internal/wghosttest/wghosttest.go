// Package wghosttest lets a test binary double as the userspace WireGuard
// host process (what `wgcnid userspace-device` runs), so that root tests
// create real userspace devices through wgdev.Ensure. One copy of what
// several test packages otherwise each write as their own TestMain.
package wghosttest

import (
	"log/slog"
	"os"
	"testing"

	"github.com/wgcni/wgcni/daemon/wgdev"
)

const hostArg = "userspace-device"

// Main runs the device host if this binary was started as one (env set to
// 1 and the host argument), and the tests otherwise. Call it from TestMain
// with an env name of the package's own.
func Main(m *testing.M, env string) {
	if os.Getenv(env) == "1" && len(os.Args) > 1 && os.Args[1] == hostArg {
		os.Exit(wgdev.RunUserspaceDevice(os.Args[2:], os.Stderr))
	}
	os.Exit(m.Run())
}

// Options are the wgdev.Options of a userspace device called name, hosted
// by this test binary (which must use Main with the same env), with its
// pid and log files in runDir and WireGuard's own events logged there.
func Options(t testing.TB, env, name, runDir string) wgdev.Options {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("find the test binary to host the device: %v", err)
	}
	return wgdev.Options{
		Name: name, MTU: 1420, Want: wgdev.Userspace, RunDir: runDir, Verbose: true,
		Exe: exe, Args: []string{hostArg}, Env: []string{env + "=1"},
		Log: slog.New(slog.DiscardHandler),
	}
}
