package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"time"
)

// PingResult is what ping reported.
type PingResult struct {
	Sent, Received int
	// Unreachable is set when the kernel refused to send at all (no
	// route, or an unreachable/prohibit route): nothing left the host.
	Unreachable bool
	Output      string
}

// Loss is the number of echo requests without reply.
func (r PingResult) Loss() int { return r.Sent - r.Received }

var pingRefused = regexp.MustCompile(`connect: (No route to host|Network is unreachable|Permission denied|Invalid argument)`)

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (packets )?received`)

// Ping sends count echo requests to dst from inside the namespace, one
// every interval, and waits at most 1 s for each reply. No reply is a
// result (Received 0), not an error; an error means ping could not run.
func (n NS) Ping(dst netip.Addr, count int, interval time.Duration) (PingResult, error) {
	return n.PingSize(dst, count, interval, 0)
}

// PingSize is Ping with a payload size (0: ping's default) and the
// don't-fragment bit set when size > 0, to probe the path MTU.
//
// No -w: with a deadline, ping stops at the first ICMP error (a host or
// network unreachable while a route or peer changes), so a loss figure
// would stop counting exactly when it matters. Without it ping sends all
// count requests and then waits twice the longest round trip seen (1 s if
// none came back); the context only guards against a hung ping.
func (n NS) PingSize(dst netip.Addr, count int, interval time.Duration, size int) (PingResult, error) {
	args := []string{"ping", "-n", "-q", "-c", strconv.Itoa(count),
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "1"}
	if size > 0 {
		args = append(args, "-s", strconv.Itoa(size), "-M", "do")
	}
	args = append(args, dst.String())
	// A loaded machine sends more slowly than asked: allow twice the time.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Duration(count)*interval+15*time.Second)
	defer cancel()
	out, _ := n.Command(ctx, args...).CombinedOutput()
	m := pingSummary.FindStringSubmatch(string(out))
	if m == nil && pingRefused.MatchString(string(out)) {
		return PingResult{Sent: count, Unreachable: true, Output: string(out)}, nil
	}
	if m == nil {
		return PingResult{Output: string(out)}, fmt.Errorf("ping %s from %s: no summary: %s", dst, n.Name, out)
	}
	sent, _ := strconv.Atoi(m[1])
	recv, _ := strconv.Atoi(m[2])
	return PingResult{Sent: sent, Received: recv, Output: string(out)}, nil
}

// TransferResult describes a verified TCP transfer.
type TransferResult struct {
	Bytes    int64
	Duration time.Duration
}

// Mbps is the goodput in megabits per second.
func (r TransferResult) Mbps() float64 {
	return float64(r.Bytes) * 8 / r.Duration.Seconds() / 1e6
}

// TCPTransfer sends size pseudo-random bytes over TCP from the client
// namespace to addr:port, where a server bound to addr inside the server
// namespace hashes what it received and sends the SHA-256 back; the client
// checks it. Both sockets are made inside their namespaces by this process,
// so no helper binary is needed.
func TCPTransfer(client, server NS, addr netip.Addr, port int, size int64, timeout time.Duration) (TransferResult, error) {
	hostport := net.JoinHostPort(addr.String(), strconv.Itoa(port))
	var ln net.Listener
	err := server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", hostport)
		return err
	})
	if err != nil {
		return TransferResult{}, fmt.Errorf("listen on %s in %s: %w", hostport, server.Name, err)
	}
	defer ln.Close()
	deadline := time.Now().Add(timeout)
	srvErr := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			srvErr <- fmt.Errorf("accept: %w", err)
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(deadline)
		h := sha256.New()
		if _, err := io.Copy(h, conn); err != nil {
			srvErr <- fmt.Errorf("server read: %w", err)
			return
		}
		_, err = conn.Write(h.Sum(nil))
		srvErr <- err
	}()
	var conn net.Conn
	err = client.Do(func() error {
		var err error
		conn, err = (&net.Dialer{Deadline: deadline}).Dial("tcp", hostport)
		return err
	})
	if err != nil {
		ln.Close()
		<-srvErr
		return TransferResult{}, fmt.Errorf("connect %s from %s: %w", hostport, client.Name, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)
	start := time.Now()
	src := io.LimitReader(rand.NewChaCha8([32]byte{'w', 'g', 'e'}), size)
	h := sha256.New()
	if _, err := io.Copy(conn, io.TeeReader(src, h)); err != nil {
		return TransferResult{}, fmt.Errorf("send to %s: %w", hostport, err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return TransferResult{}, err
	}
	sum := make([]byte, sha256.Size)
	if _, err := io.ReadFull(conn, sum); err != nil {
		return TransferResult{}, fmt.Errorf("read digest from %s: %w", hostport, err)
	}
	dur := time.Since(start)
	if err := <-srvErr; err != nil {
		return TransferResult{}, fmt.Errorf("server in %s: %w", server.Name, err)
	}
	if !bytes.Equal(sum, h.Sum(nil)) {
		return TransferResult{}, fmt.Errorf("transfer to %s corrupted: digests differ", hostport)
	}
	return TransferResult{Bytes: size, Duration: dur}, nil
}

// IperfResult is an iperf3 TCP measurement.
type IperfResult struct {
	BitsPerSecond float64
	Seconds       float64 // measured by iperf3
	Retransmits   int
	// CPU is the user+system time of the iperf3 client and server (their
	// rusage, which includes the kernel work done in their context): the
	// denominator of the benchmarks' Gbit per CPU-second.
	CPU time.Duration
}

// Iperf3 runs an iperf3 server bound to addr in the server namespace and a
// client in the client namespace for the given duration and streams.
func Iperf3(client, server NS, addr netip.Addr, port int, d time.Duration, streams int) (IperfResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	srv := server.Command(ctx, "iperf3", "-s", "-1", "-B", addr.String(), "-p", strconv.Itoa(port))
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return IperfResult{}, fmt.Errorf("start iperf3 server in %s: %w", server.Name, err)
	}
	srvDone := false
	defer func() {
		if !srvDone {
			_ = srv.Process.Kill()
			_ = srv.Wait()
		}
	}()
	var out []byte
	var cl *exec.Cmd
	var err error
	// The server needs a moment to listen; iperf3 fails fast until then.
	// (With -J, iperf3 may report the refusal in its JSON and exit 0.)
	for i := 0; i < 50; i++ {
		cl = client.Command(ctx, "iperf3", "-c", addr.String(), "-p", strconv.Itoa(port),
			"-t", strconv.Itoa(max(1, int(d.Seconds()))), "-P", strconv.Itoa(max(streams, 1)), "-J")
		out, err = cl.Output()
		if !bytes.Contains(out, []byte("unable to connect")) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return IperfResult{}, fmt.Errorf("iperf3 client in %s to %s: %w: %s %s", client.Name, addr, err, out, srvOut.String())
	}
	var res struct {
		End struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return IperfResult{}, fmt.Errorf("parse iperf3 output: %w", err)
	}
	if res.Error != "" {
		return IperfResult{}, fmt.Errorf("iperf3 client in %s to %s: %s (server: %s)", client.Name, addr, res.Error, srvOut.String())
	}
	// The server exits after one test (-1); its rusage is complete then.
	werr := make(chan error, 1)
	go func() { werr <- srv.Wait() }()
	select {
	case <-werr:
		srvDone = true
	case <-time.After(5 * time.Second):
	}
	cpu := cl.ProcessState.UserTime() + cl.ProcessState.SystemTime()
	if srvDone {
		cpu += srv.ProcessState.UserTime() + srv.ProcessState.SystemTime()
	}
	return IperfResult{BitsPerSecond: res.End.SumReceived.BitsPerSecond, Seconds: res.End.SumReceived.Seconds,
		Retransmits: res.End.SumSent.Retransmits, CPU: cpu}, nil
}
