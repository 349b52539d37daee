// Command wgref is the data-path benchmark's reference: a plain userspace
// WireGuard device made from golang.zx2c4.com/wireguard exactly as the
// module's own wireguard-go main does it (tun.CreateTUN, default bind, UAPI
// socket), with nothing of wgcni around it. Configure it with wg/wgctrl.
//
//	wgref NAME MTU
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: wgref NAME MTU")
		os.Exit(2)
	}
	name := os.Args[1]
	mtu, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "wgref: bad MTU:", err)
		os.Exit(2)
	}
	tdev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wgref: create TUN:", err)
		os.Exit(1)
	}
	logger := device.NewLogger(device.LogLevelError, "wgref("+name+") ")
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), logger)
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wgref: UAPI:", err)
		os.Exit(1)
	}
	uapi, err := ipc.UAPIListen(name, f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wgref: UAPI listen:", err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	fmt.Printf("ready batch=%d\n", dev.BatchSize())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case <-dev.Wait():
	}
	uapi.Close()
	dev.Close()
}
