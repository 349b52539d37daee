// Package helperproc starts and recognises wgcnid's long-lived helper
// processes: the userspace WireGuard device (`wgcnid userspace-device`,
// daemon/wgdev) and the same-node pod devices (`wgcnid samenode-host`,
// daemon/samenode/poddevices). Both are started detached — own session,
// no controlling terminal, reparented to init when the daemon exits — so
// the data plane they carry outlives daemon restarts; both report
// readiness on fd 3; and a restarted daemon finds them again by pid file,
// checking the pid's command line before it trusts or signals it (pids are
// reused).
package helperproc

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgcni/wgcni/daemon/nodefile"
)

// ReadyTimeout bounds how long Start waits for a helper's readiness line.
const ReadyTimeout = 15 * time.Second

// readyFD is the fd a helper reports readiness on ("ready\n", or the error
// that stopped it on one line).
const readyFD = 3

// Spec says which helper to start.
type Spec struct {
	// What names the helper in errors and logs ("userspace WireGuard
	// device wg0").
	What string
	// Exe is the program (default: Executable()); Args its arguments,
	// the subcommand first.
	Exe  string
	Args []string
	Env  []string // added to the daemon's environment
	// LogPath receives the helper's stdout and stderr (appended).
	LogPath string
	Log     *slog.Logger
}

// Executable is the program to run helpers with: this very binary. The
// resolved path rather than /proc/self/exe keeps the helper's name (wgcnid)
// in ps, top and perf; /proc/self/exe is the fallback when the binary was
// replaced or removed since the daemon started (an upgrade in place).
func Executable() string {
	if p, err := os.Executable(); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "/proc/self/exe"
}

// Start runs the helper detached and waits until it reports ready on fd 3.
// It returns the helper's pid; on error the helper has been killed.
func Start(s Spec) (int, error) {
	if s.Exe == "" {
		s.Exe = Executable()
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("open log of %s: %w", s.What, err)
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("readiness pipe of %s: %w", s.What, err)
	}
	defer pr.Close()
	cmd := exec.Command(s.Exe, s.Args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw} // fd 3
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return 0, fmt.Errorf("start %s (%s): %w", s.What, s.Exe, err)
	}
	pw.Close()
	// Reap it if it ever exits while we are still its parent.
	go func() {
		err := cmd.Wait()
		s.Log.Warn("helper process exited", "helper", s.What, "pid", cmd.Process.Pid, "err", err)
	}()
	pr.SetReadDeadline(time.Now().Add(ReadyTimeout))
	line, err := bufio.NewReader(pr).ReadString('\n')
	line = strings.TrimSpace(line)
	if line != "ready" {
		if err != nil && line == "" {
			line = err.Error()
		}
		cmd.Process.Kill()
		return 0, fmt.Errorf("%s did not start: %s (log: %s)", s.What, line, s.LogPath)
	}
	return cmd.Process.Pid, nil
}

// Readiness is the helper's end of the readiness pipe.
type Readiness struct{ f *os.File }

// ReadyPipe returns fd 3 if it is open (the helper was started by Start),
// else a Readiness that reports nowhere. It is wrapped only if open: an
// *os.File for a closed fd would, once garbage collected, close whatever
// file (a TUN) got fd 3 later.
func ReadyPipe() *Readiness {
	if _, err := unix.FcntlInt(readyFD, unix.F_GETFD, 0); err != nil {
		return &Readiness{}
	}
	return &Readiness{f: os.NewFile(readyFD, "ready")}
}

// Ready tells the starter the helper serves.
func (r *Readiness) Ready() { r.send("ready") }

// Fail tells the starter why the helper stopped.
func (r *Readiness) Fail(err error) { r.send(strings.ReplaceAll(err.Error(), "\n", " ")) }

func (r *Readiness) send(line string) {
	if r.f == nil {
		return
	}
	fmt.Fprintln(r.f, line)
	r.f.Close()
	r.f = nil
}

// Lifetime is a helper's life: a context that ends on SIGTERM or SIGINT.
// SIGHUP (a terminal closing) and SIGPIPE never end a helper: it carries
// data plane.
func Lifetime() (context.Context, context.CancelFunc) {
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// WritePID records this process's pid in path (atomically).
func WritePID(path string) error {
	return nodefile.WriteFileAtomic(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
}

// ReadPID reads a pid file written by WritePID.
func ReadPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: bad pid %q", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// Match tells whether a command line (argv) is the helper looked for.
type Match func(args []string) bool

// Subcommand matches a helper run as subcommand sub (any program), with
// flag value pairs: e.g. Subcommand("userspace-device", "--name", "wg0").
func Subcommand(sub string, flagValue ...string) Match {
	return func(args []string) bool {
		if !slices.Contains(args, sub) {
			return false
		}
		for i := 0; i+1 < len(flagValue); i += 2 {
			j := slices.Index(args, flagValue[i])
			if j < 0 || j+1 >= len(args) || args[j+1] != flagValue[i+1] {
				return false
			}
		}
		return true
	}
}

// Running reports whether pid is a live process (not a zombie) whose
// command line matches (nil: any).
func Running(pid int, match Match) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && zombie(string(st)) {
		return false
	}
	return match == nil || match(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"))
}

// zombie reads the state field of /proc/PID/stat (after the ")" that ends
// the command name, which may itself hold spaces and parentheses).
func zombie(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// Stop sends SIGTERM to pid if it is the helper match describes, waits up
// to grace for it to end, then kills it. A pid that is gone or belongs to
// something else (reused) is left alone. It reports whether it signalled.
func Stop(pid int, match Match, grace time.Duration) bool {
	if pid <= 1 || !Running(pid, match) {
		return false
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return false
	}
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if !Running(pid, nil) {
			return true
		}
	}
	syscall.Kill(pid, syscall.SIGKILL)
	return true
}
