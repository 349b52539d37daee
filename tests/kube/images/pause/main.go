// Command pause is the lab's pod sandbox process (what registry.k8s.io/pause
// runs): it holds the pod's namespaces, reaps orphans as PID 1, and exits
// on SIGINT or SIGTERM. No registry is reachable here, so the lab builds
// its pause image from this.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
