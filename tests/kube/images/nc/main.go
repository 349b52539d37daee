// Command nc is the little of netcat that Kubernetes' e2e network checks
// run in the agnhost image (`echo hostName | nc -w 1 -u IP PORT`): send
// stdin, print what comes back until -w seconds pass without an answer.
// Debian's static busybox nc has no UDP; upstream's agnhost image has
// netcat-openbsd.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	wait, network := 2*time.Second, "tcp"
	var pos []string
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-u":
			network = "udp"
		case "-w":
			if i+1 >= len(args) {
				fail("-w needs a value")
			}
			n, err := strconv.Atoi(args[i+1])
			if err != nil {
				fail("-w %q: %v", args[i+1], err)
			}
			wait = time.Duration(n) * time.Second
			i++
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		fail("usage: nc [-u] [-w SEC] HOST PORT")
	}
	conn, err := net.DialTimeout(network, net.JoinHostPort(pos[0], pos[1]), wait)
	if err != nil {
		fail("%v", err)
	}
	defer conn.Close()
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("stdin: %v", err)
	}
	if _, err := conn.Write(in); err != nil {
		fail("%v", err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	buf := make([]byte, 64<<10)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		n, err := conn.Read(buf)
		os.Stdout.Write(buf[:n])
		if err != nil {
			return
		}
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "nc: "+format+"\n", args...)
	os.Exit(1)
}
