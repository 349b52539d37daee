package helperproc

import (
	"errors"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const helperEnv = "WGD_HELPERPROC_TEST"

// TestMain lets the test binary double as a helper: "test-helper MODE
// PIDFILE", MODE ready (serve until SIGTERM), stubborn (ignore SIGTERM) or
// fail (report an error on the readiness pipe).
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" && len(os.Args) == 4 && os.Args[1] == "test-helper" {
		os.Exit(runHelper(os.Args[2], os.Args[3]))
	}
	os.Exit(m.Run())
}

func runHelper(mode, pidFile string) int {
	ready := ReadyPipe()
	if mode == "fail" {
		ready.Fail(errors.New("cannot serve:\nno device"))
		return 1
	}
	if err := WritePID(pidFile); err != nil {
		ready.Fail(err)
		return 1
	}
	if mode == "stubborn" {
		signal.Ignore(syscall.SIGTERM)
		ready.Ready()
		select {}
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ready.Ready()
	<-term
	return 0
}

func start(t *testing.T, mode string) (int, string, Match) {
	t.Helper()
	t.Setenv(helperEnv, "1")
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "helper.pid")
	pid, err := Start(Spec{What: "test helper", Args: []string{"test-helper", mode, pidFile}, LogPath: filepath.Join(dir, "helper.log")})
	if err == nil {
		t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	}
	if err != nil {
		return 0, dir, nil
	}
	return pid, pidFile, Subcommand("test-helper", mode, pidFile)
}

// TestStartAndStop: a started helper is detached (own session), reports
// ready, is recognised by its pid file and command line (and not by
// another helper's), and Stop ends it.
func TestStartAndStop(t *testing.T) {
	pid, pidFile, match := start(t, "ready")
	if pid == 0 {
		t.Fatal("helper did not start")
	}
	if got, err := ReadPID(pidFile); err != nil || got != pid {
		t.Fatalf("pid file: %d %v, want %d", got, err, pid)
	}
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Errorf("helper session %d (%v), want its own (%d)", sid, err, pid)
	}
	if !Running(pid, match) {
		t.Fatal("helper not recognised by its command line")
	}
	if Running(pid, Subcommand("test-helper", "ready", "/other/pidfile")) || Running(pid, Subcommand("userspace-device")) {
		t.Fatal("helper recognised as another helper")
	}
	if exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); !strings.HasSuffix(exe, filepath.Base(os.Args[0])) {
		t.Errorf("helper runs %s, want this test binary", exe)
	}
	if !Stop(pid, match, 5*time.Second) {
		t.Fatal("Stop did not signal the helper")
	}
	if Running(pid, nil) {
		t.Fatal("helper still running after Stop")
	}
}

// TestStopLeavesOthersAlone: a pid whose command line is not the helper
// looked for (a reused pid) is never signalled.
func TestStopLeavesOthersAlone(t *testing.T) {
	pid, _, _ := start(t, "ready")
	if Stop(pid, Subcommand("samenode-host"), time.Second) {
		t.Fatal("Stop signalled a process that is not the helper asked for")
	}
	if !Running(pid, nil) {
		t.Fatal("the other process died")
	}
}

// TestStopKillsStubborn: a helper ignoring SIGTERM is killed after the
// grace period.
func TestStopKillsStubborn(t *testing.T) {
	pid, _, match := start(t, "stubborn")
	begin := time.Now()
	if !Stop(pid, match, 200*time.Millisecond) {
		t.Fatal("Stop did not signal the helper")
	}
	// Stop returns before the grace period only if SIGTERM ended it.
	if took := time.Since(begin); took < 200*time.Millisecond {
		t.Fatalf("Stop returned after %v: the helper did not ignore SIGTERM, nothing tested", took)
	}
	for deadline := time.Now().Add(5 * time.Second); Running(pid, nil); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("stubborn helper still running 5 s after Stop")
		}
	}
}

// TestStartReportsFailure: the helper's error line reaches the starter,
// with the log path.
func TestStartReportsFailure(t *testing.T) {
	t.Setenv(helperEnv, "1")
	dir := t.TempDir()
	_, err := Start(Spec{What: "test helper", Args: []string{"test-helper", "fail", filepath.Join(dir, "p")}, LogPath: filepath.Join(dir, "helper.log")})
	if err == nil || !strings.Contains(err.Error(), "test helper did not start: cannot serve: no device") || !strings.Contains(err.Error(), "helper.log") {
		t.Fatalf("Start = %v, want the helper's error and log path", err)
	}
}

func TestZombie(t *testing.T) {
	for stat, want := range map[string]bool{
		"42 (wgcnid) S 1 42":         false,
		"42 (wgcnid) Z 1 42":         true,
		"42 (a) Z (b)) S 1 42":       false,
		"42 (we ird) name) Z 1 42 x": true,
		"garbage":                    false,
	} {
		if got := zombie(stat); got != want {
			t.Errorf("zombie(%q) = %v, want %v", stat, got, want)
		}
	}
}

func TestReadPID(t *testing.T) {
	dir := t.TempDir()
	for content, ok := range map[string]bool{"1234\n": true, "1\n": false, "x\n": false, "": false} {
		p := filepath.Join(dir, "pid")
		os.WriteFile(p, []byte(content), 0o644)
		if _, err := ReadPID(p); (err == nil) != ok {
			t.Errorf("ReadPID(%q) = %v, want ok=%v", content, err, ok)
		}
	}
}
