package wgdev

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/tundev"
)

// readyTimeout bounds how long the daemon waits for its host process.
const readyTimeout = 15 * time.Second

// createUserspace starts the host process detached (own session, no
// controlling terminal, reparented to init when the daemon exits) so the
// device outlives daemon restarts, and waits until it reports ready.
func createUserspace(o Options) (*Device, error) {
	exe, args := o.Exe, o.Args
	if exe == "" {
		exe, args = "/proc/self/exe", []string{"userspace-device"}
		// Exec'd as /proc/self/exe the host would be called "exe" in ps,
		// top and perf; the resolved path keeps the name wgcnid.
		if p, err := os.Executable(); err == nil {
			if _, err := os.Stat(p); err == nil {
				exe = p
			}
		}
	}
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("create run dir %s: %w", o.RunDir, err)
	}
	logPath := filepath.Join(o.RunDir, o.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open userspace WireGuard log %s: %w", logPath, err)
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("readiness pipe: %w", err)
	}
	defer pr.Close()

	args = append(args, "--name", o.Name, "--mtu", strconv.Itoa(o.MTU), "--run-dir", o.RunDir)
	if o.Verbose {
		args = append(args, "--verbose")
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = []*os.File{pw} // fd 3: readiness
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return nil, fmt.Errorf("start userspace WireGuard process %s: %w", exe, err)
	}
	pw.Close()
	// Reap it if it ever exits while we are still its parent.
	go func() {
		err := cmd.Wait()
		o.Log.Warn("userspace WireGuard process exited", "device", o.Name, "pid", cmd.Process.Pid, "err", err)
	}()

	pr.SetReadDeadline(time.Now().Add(readyTimeout))
	line, err := bufio.NewReader(pr).ReadString('\n')
	line = strings.TrimSpace(line)
	if line != "ready" {
		if err != nil && line == "" {
			line = err.Error()
		}
		cmd.Process.Kill()
		return nil, fmt.Errorf("userspace WireGuard device %s did not start: %s (log: %s)", o.Name, line, logPath)
	}
	o.Log.Info("started userspace WireGuard device", "device", o.Name, "pid", cmd.Process.Pid)
	return &Device{Name: o.Name, Mode: Userspace, PID: cmd.Process.Pid}, nil
}

// probeUserspace checks that the UAPI socket of name answers.
func probeUserspace(name string) error {
	c, err := net.DialTimeout("unix", SocketPath(name), 2*time.Second)
	if err != nil {
		return fmt.Errorf("UAPI socket %s: %w", SocketPath(name), err)
	}
	c.Close()
	return nil
}

// RunHost is the body of `wgcnid userspace-device`: it hosts one userspace
// WireGuard device (TUN + UAPI socket) until SIGTERM/SIGINT or until its
// socket is removed. Readiness is reported on fd 3 if it is open.
func RunHost(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("userspace-device", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "device name")
	mtu := fs.Int("mtu", device.DefaultMTU, "device MTU")
	runDir := fs.String("run-dir", nodefile.DefaultRunDir, "directory for the pid file")
	verbose := fs.Bool("verbose", false, "log WireGuard's handshake and timer events")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Wrap fd 3 only if it is open: an *os.File for a closed fd would,
	// once garbage collected, close whatever file (the TUN) got fd 3 later.
	var ready *os.File
	if _, err := unix.FcntlInt(3, unix.F_GETFD, 0); err == nil {
		ready = os.NewFile(3, "ready")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("device", *name, "pid", os.Getpid())
	fail := func(err error) int {
		log.Error("userspace WireGuard device failed", "err", err)
		if ready != nil {
			fmt.Fprintf(ready, "%s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			ready.Close()
		}
		return 1
	}
	if *name == "" {
		return fail(errors.New("--name is required"))
	}
	if *mtu <= 0 {
		*mtu = device.DefaultMTU
	}
	if err := os.MkdirAll(*runDir, 0o755); err != nil {
		return fail(fmt.Errorf("create run dir: %w", err))
	}

	// tun.CreateTUN enables the kernel's virtio-net header (TSO/GSO and
	// GRO offloads) and the default bind batches UDP with GSO/GRO: the
	// fast paths of modern wireguard-go.
	tdev, err := tun.CreateTUN(*name, *mtu)
	if err != nil {
		return fail(fmt.Errorf("create TUN %s: %w", *name, tundev.Explain(tundev.Path, err)))
	}
	uapiFile, err := ipc.UAPIOpen(*name)
	if err != nil {
		tdev.Close()
		return fail(fmt.Errorf("open UAPI socket %s: %w", SocketPath(*name), err))
	}
	dlog := &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf:   func(format string, a ...any) { log.Error(fmt.Sprintf(format, a...)) },
	}
	if *verbose {
		dlog.Verbosef = func(format string, a ...any) { log.Debug(fmt.Sprintf(format, a...)) }
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), dlog)
	uapi, err := ipc.UAPIListen(*name, uapiFile)
	if err != nil {
		dev.Close()
		return fail(fmt.Errorf("listen on UAPI socket: %w", err))
	}
	if err := nodefile.WriteFileAtomic(PIDFile(*runDir, *name), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		uapi.Close()
		dev.Close()
		return fail(err)
	}
	errs := make(chan error, 1)
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				errs <- err
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	if ready != nil {
		fmt.Fprintln(ready, "ready")
		ready.Close()
	}
	log.Info("userspace WireGuard device running", "mtu", *mtu, "batch", dev.BatchSize())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP must not kill the data plane (e.g. a terminal closing).
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	select {
	case <-ctx.Done():
		log.Info("stopping on signal")
	case err := <-errs:
		// The socket was removed: the device can no longer be managed.
		log.Error("UAPI listener ended; stopping", "err", err)
	case <-dev.Wait():
		log.Info("device closed")
	}
	uapi.Close()
	dev.Close()
	os.Remove(PIDFile(*runDir, *name))
	return 0
}

func readPID(path string) (int, error) {
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

// stopHost terminates the host process of device name, after checking the
// pid still belongs to it (pids are reused).
func stopHost(pid int, name string) error {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil // already gone
	}
	args := strings.Split(string(cmdline), "\x00")
	if !hostOf(args, name) {
		return nil // pid reused by something else: not ours to kill
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return nil
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && isZombie(string(st)) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	return nil
}

func hostOf(args []string, name string) bool {
	host := false
	for _, a := range args {
		host = host || a == "userspace-device"
	}
	if !host {
		return false
	}
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--name" && args[i+1] == name {
			return true
		}
	}
	return false
}

func isZombie(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// DeviceType reports whether name is served by kernel or userspace
// WireGuard, asking wgctrl (which reads both the same way).
func DeviceType(wg *wgctrl.Client, name string) (string, error) {
	d, err := wg.Device(name)
	if err != nil {
		return "", err
	}
	return d.Type.String(), nil
}
