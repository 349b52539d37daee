package wgdev

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/helperproc"
	"github.com/wgcni/wgcni/daemon/internal/netnstest"
)

const hostEnv = "WGD_WGDEV_TEST_HOST"

// TestMain lets the test binary double as the userspace host process.
func TestMain(m *testing.M) {
	if os.Getenv(hostEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "userspace-device" {
		os.Exit(RunUserspaceDevice(os.Args[2:], os.Stderr))
	}
	os.Exit(m.Run())
}

func testOptions(t *testing.T, name string, want Mode) Options {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		Name: name, MTU: 1420, Want: want, RunDir: t.TempDir(),
		Exe: exe, Args: []string{"userspace-device"}, Env: []string{hostEnv + "=1"},
		Log: slog.New(slog.DiscardHandler),
	}
}

func TestKernelLinkRequest(t *testing.T) {
	l := kernelLink("wgd-k0", 1420)
	if l.Type() != "wireguard" || l.Attrs().Name != "wgd-k0" || l.Attrs().MTU != 1420 {
		t.Fatalf("request %s %+v", l.Type(), l.Attrs())
	}
	if kernelLink("x", 0).Attrs().MTU != 0 {
		t.Fatal("MTU 0 must leave the kernel default")
	}
}

func TestClassifyKernelErr(t *testing.T) {
	err := classifyKernelErr("wgd-k0", syscall.EOPNOTSUPP)
	if !errors.Is(err, ErrKernelUnavailable) || !errors.Is(err, syscall.EOPNOTSUPP) || !strings.Contains(err.Error(), "wireguard kernel module") || !strings.Contains(err.Error(), "wgd-k0") {
		t.Fatalf("EOPNOTSUPP: %v", err)
	}
	if err := classifyKernelErr("wgd-k0", syscall.EINVAL); errors.Is(err, ErrKernelUnavailable) {
		t.Fatalf("EINVAL must not trigger fallback: %v", err)
	}
}

func kernelHasWireGuard() bool {
	_, err := os.Stat("/sys/module/wireguard")
	return err == nil
}

func TestKernelModeFailsClearly(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	if kernelHasWireGuard() {
		t.Skip("this kernel has WireGuard; the failure path cannot be observed")
	}
	o := testOptions(t, "wgd-k1", Kernel)
	err := n.Do(func(ns.NetNS) error {
		_, err := Ensure(o)
		if _, lerr := netlink.LinkByName("wgd-k1"); lerr == nil {
			return fmt.Errorf("a link was left behind")
		}
		return err
	})
	if !errors.Is(err, ErrKernelUnavailable) || !strings.Contains(err.Error(), "wireguard kernel module") {
		t.Fatalf("kernel mode without module: %v", err)
	}
	t.Logf("kernel mode error: %v", err)
}

func TestAutoFallsBackToUserspaceAndIsAdopted(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	name := netnstest.DeviceName("wgd-u1")
	o := testOptions(t, name, Auto)
	t.Cleanup(func() { n.Do(func(ns.NetNS) error { return Remove(o.RunDir, name, o.Log) }) })
	key, _ := wgtypes.GeneratePrivateKey()
	var first *Device
	err := n.Do(func(ns.NetNS) error {
		d, err := Ensure(o)
		if err != nil {
			return err
		}
		first = d
		wantMode := Userspace
		if kernelHasWireGuard() {
			wantMode = Kernel
		}
		if d.Mode != wantMode || d.Adopted {
			return fmt.Errorf("got %+v, want new %s device", d, wantMode)
		}
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if link.Attrs().MTU != 1420 || link.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("link MTU %d flags %v", link.Attrs().MTU, link.Attrs().Flags)
		}
		wg, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer wg.Close()
		if err := Configure(wg, name, key, 51999); err != nil {
			return err
		}
		dev, err := wg.Device(name)
		if err != nil {
			return err
		}
		if dev.PrivateKey != key || dev.ListenPort != 51999 {
			return fmt.Errorf("device not configured: port %d", dev.ListenPort)
		}
		if d.Mode == Userspace && dev.Type != wgtypes.Userspace {
			return fmt.Errorf("wgctrl sees type %v", dev.Type)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if first.Mode != Userspace {
		return
	}
	// The host runs in its own session so it outlives the daemon.
	if sid, _ := unix.Getsid(first.PID); sid != first.PID {
		t.Fatalf("host process %d is in session %d, want its own", first.PID, sid)
	}
	if pid, err := readPID(PIDFile(o.RunDir, name)); err != nil || pid != first.PID {
		t.Fatalf("pid file: %d %v", pid, err)
	}
	// A second Ensure (a restarted daemon) adopts the same process.
	err = n.Do(func(ns.NetNS) error {
		d, err := Ensure(o)
		if err != nil {
			return err
		}
		if !d.Adopted || d.PID != first.PID || d.Mode != Userspace {
			return fmt.Errorf("second Ensure: %+v", d)
		}
		wg, _ := wgctrl.New()
		defer wg.Close()
		// Unchanged config: Configure must be a no-op (no rebind).
		return Configure(wg, name, key, 51999)
	})
	if err != nil {
		t.Fatal(err)
	}
	// Remove stops the process and the device disappears with it.
	err = n.Do(func(ns.NetNS) error {
		if err := Remove(o.RunDir, name, o.Log); err != nil {
			return err
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, lerr := netlink.LinkByName(name)
			_, serr := os.Stat(SocketPath(name))
			if lerr != nil && serr != nil {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("after Remove: link err %v, socket err %v", lerr, serr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if helperproc.Running(first.PID, nil) {
		t.Fatalf("host process %d still running", first.PID)
	}
}

func TestForeignInterfaceRefused(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	o := testOptions(t, "wgd-f1", Auto)
	err := n.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "wgd-f1"
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return err
		}
		_, err := Ensure(o)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "bridge") || !strings.Contains(err.Error(), "wgd-f1") {
		t.Fatalf("foreign interface: %v", err)
	}
}

func TestHostFailsReportsReason(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	o := testOptions(t, "wgd-name-too-long-for-linux", Userspace)
	err := n.Do(func(ns.NetNS) error { _, err := Ensure(o); return err })
	if err == nil || !strings.Contains(err.Error(), "did not start") {
		t.Fatalf("bad name: %v", err)
	}
	t.Logf("host failure: %v", err)
}

// TestChoose pins the fallback rule every WireGuard device follows: only
// "kernel unavailable" in auto mode falls back to userspace.
func TestChoose(t *testing.T) {
	unavailable := fmt.Errorf("%w: no module", ErrKernelUnavailable)
	other := errors.New("EINVAL")
	for _, tc := range []struct {
		want               Mode
		kernelErr          error
		got                Mode
		err                error
		kernelRan, userRan bool
	}{
		{want: Auto, kernelErr: nil, got: Kernel, kernelRan: true},
		{want: "", kernelErr: unavailable, got: Userspace, kernelRan: true, userRan: true},
		{want: Auto, kernelErr: unavailable, got: Userspace, kernelRan: true, userRan: true},
		{want: Auto, kernelErr: other, err: other, kernelRan: true},
		{want: Kernel, kernelErr: unavailable, err: ErrKernelUnavailable, kernelRan: true},
		{want: Userspace, kernelErr: unavailable, got: Userspace, userRan: true},
	} {
		var kernelRan, userRan bool
		got, err := Choose(tc.want,
			func() error { kernelRan = true; return tc.kernelErr },
			func() error { userRan = true; return nil },
			slog.New(slog.DiscardHandler))
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("Choose(%q, kernel err %v) = %v, want %v", tc.want, tc.kernelErr, err, tc.err)
			}
		} else if err != nil || got != tc.got {
			t.Errorf("Choose(%q, kernel err %v) = %s, %v; want %s", tc.want, tc.kernelErr, got, err, tc.got)
		}
		if kernelRan != tc.kernelRan || userRan != tc.userRan {
			t.Errorf("Choose(%q, kernel err %v) ran kernel=%v userspace=%v", tc.want, tc.kernelErr, kernelRan, userRan)
		}
	}
	if _, err := Choose("bogus", nil, nil, nil); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown mode: %v", err)
	}
}

func TestProbeKernel(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	err := n.Do(func(ns.NetNS) error {
		err := ProbeKernel("wgd-p0")
		if _, lerr := netlink.LinkByName("wgd-p0"); lerr == nil {
			return fmt.Errorf("probe link left behind (probe err %v)", err)
		}
		return err
	})
	if kernelHasWireGuard() {
		if err != nil {
			t.Fatalf("kernel has WireGuard but probe failed: %v", err)
		}
		return
	}
	if !errors.Is(err, ErrKernelUnavailable) || !strings.Contains(err.Error(), "wireguard kernel module") {
		t.Fatalf("probe without module: %v", err)
	}
}

// TestExternalHostIsWaitedForAndAdopted: with External, Ensure never makes
// a device; it reports ErrNotHosted (creating nothing) until another
// process — a sidecar container in production, here the test binary
// started by hand — hosts it, then adopts it.
func TestExternalHostIsWaitedForAndAdopted(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	name := netnstest.DeviceName("wgd-x")
	o := testOptions(t, name, Userspace)
	o.External = true
	err := n.Do(func(ns.NetNS) error { _, err := Ensure(o); return err })
	if !errors.Is(err, ErrNotHosted) || !strings.Contains(err.Error(), name) {
		t.Fatalf("no host yet: %v, want ErrNotHosted naming %s", err, name)
	}
	n.Do(func(ns.NetNS) error {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("Ensure created %s although the host is external", name)
		}
		return nil
	})
	if _, err := os.Stat(PIDFile(o.RunDir, name)); err == nil {
		t.Error("Ensure started a host although the host is external")
	}

	// The "sidecar": its own process, not started by Ensure.
	exe, _ := os.Executable()
	hostDir := t.TempDir()
	cmd := exec.Command(exe, "userspace-device", "--name", name, "--mtu", "1420", "--run-dir", hostDir)
	cmd.Env = append(os.Environ(), hostEnv+"=1")
	if err := n.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		// A graceful stop unlinks the socket; a host that died another way
		// leaves it in the directory all namespaces share.
		os.Remove(SocketPath(name))
	})
	var d *Device
	deadline := time.Now().Add(10 * time.Second)
	for {
		err = n.Do(func(ns.NetNS) error { var err error; d, err = Ensure(o); return err })
		if err == nil || !errors.Is(err, ErrNotHosted) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("device hosted by another process: %v", err)
	}
	if !d.Adopted || d.Mode != Userspace {
		t.Fatalf("got %+v, want the external device adopted", d)
	}
}

// TestTUNWithoutSocketYet is the window between a userspace host creating
// its TUN and listening on its UAPI socket: Ensure must wait for the
// socket (a host still starting) and adopt the device, and only after
// SocketWait call the TUN foreign — changing nothing either way.
func TestTUNWithoutSocketYet(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	for _, c := range []struct {
		name   string
		listen bool // a "host" starts listening after Ensure began
	}{{"host starts listening late", true}, {"nobody ever listens", false}} {
		t.Run(c.name, func(t *testing.T) {
			name := netnstest.DeviceName("wgd-s")
			o := testOptions(t, name, Userspace)
			o.External = true
			tuntap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TUN}
			if err := n.Do(func(ns.NetNS) error { return netlink.LinkAdd(tuntap) }); err != nil {
				t.Fatalf("create a TUN %s: %v", name, err)
			}
			if err := os.MkdirAll(SocketDir, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(SocketPath(name)) })
			listening := make(chan net.Listener, 1)
			if c.listen {
				o.SocketWait = time.Minute
				go func() {
					// Late on purpose: Ensure is already probing.
					time.Sleep(300 * time.Millisecond)
					l, err := net.Listen("unix", SocketPath(name))
					if err != nil {
						t.Error(err)
					}
					listening <- l
				}()
			} else {
				o.SocketWait = 300 * time.Millisecond
			}
			var d *Device
			err := n.Do(func(ns.NetNS) error { var err error; d, err = Ensure(o); return err })
			if c.listen {
				if l := <-listening; l != nil {
					l.Close()
				}
				if err != nil || !d.Adopted || d.Mode != Userspace {
					t.Fatalf("Ensure while the host is still starting: %+v, %v; want the device adopted once its socket listens", d, err)
				}
				return
			}
			if err == nil || errors.Is(err, ErrNotHosted) || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "no UAPI socket answered within") {
				t.Fatalf("TUN that never gets a socket: %v; want an error naming %s and the wait", err, name)
			}
			// Nothing was changed: the foreign TUN is still there.
			if err := n.Do(func(ns.NetNS) error { _, err := netlink.LinkByName(name); return err }); err != nil {
				t.Fatalf("foreign TUN %s was removed: %v", name, err)
			}
		})
	}
}
