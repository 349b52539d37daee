package wgdev

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/wgcni/wgcni/daemon/helperproc"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/tundev"
)

// createUserspace starts the host process of the device (helperproc: detached,
// so the device outlives daemon restarts) and waits until it reports ready.
func createUserspace(o Options) (*Device, error) {
	args := o.Args
	if o.Exe == "" {
		args = []string{"userspace-device"}
	}
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("create run dir %s: %w", o.RunDir, err)
	}
	args = append(slices.Clone(args), "--name", o.Name, "--mtu", strconv.Itoa(o.MTU), "--run-dir", o.RunDir)
	if o.Verbose {
		args = append(args, "--verbose")
	}
	pid, err := helperproc.Start(helperproc.Spec{
		What: "userspace WireGuard device " + o.Name, Exe: o.Exe, Args: args, Env: o.Env,
		LogPath: filepath.Join(o.RunDir, o.Name+".log"), Log: o.Log,
	})
	if err != nil {
		return nil, err
	}
	o.Log.Info("started userspace WireGuard device", "device", o.Name, "pid", pid)
	return &Device{Name: o.Name, Mode: Userspace, PID: pid}, nil
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

// RunUserspaceDevice is the body of `wgcnid userspace-device`: the process
// that carries one userspace WireGuard device (TUN + UAPI socket) until
// SIGTERM/SIGINT or until its socket is removed. Readiness is reported on
// fd 3 if it is open (helperproc).
func RunUserspaceDevice(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("userspace-device", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "device name")
	mtu := fs.Int("mtu", device.DefaultMTU, "device MTU")
	runDir := fs.String("run-dir", nodefile.DefaultRunDir, "directory for the pid file")
	verbose := fs.Bool("verbose", false, "log WireGuard's handshake and timer events")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ready := helperproc.ReadyPipe()
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("device", *name, "pid", os.Getpid())
	fail := func(err error) int {
		log.Error("userspace WireGuard device failed", "err", err)
		ready.Fail(err)
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
	if err := helperproc.WritePID(PIDFile(*runDir, *name)); err != nil {
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
	ready.Ready()
	log.Info("userspace WireGuard device running", "mtu", *mtu, "batch", dev.BatchSize())

	ctx, stop := helperproc.Lifetime()
	defer stop()
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

func readPID(path string) (int, error) { return helperproc.ReadPID(path) }

// stopDeviceProcess terminates the process of userspace device name, after
// checking the pid still runs it (pids are reused).
func stopDeviceProcess(pid int, name string) error {
	helperproc.Stop(pid, deviceProcess(name), 5*time.Second)
	return nil
}

// deviceProcess recognises the command line of device name's process.
func deviceProcess(name string) helperproc.Match {
	return helperproc.Subcommand("userspace-device", "--name", name)
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
