package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdCluster is a multi-member etcd cluster (Debian's etcd binary) in the
// underlay namespace, next to the cluster's single etcd: each member
// listens on the underlay gateway address with its own ports. Daemons use
// it when given --etcd-endpoints EtcdCluster.EndpointList().
type EtcdCluster struct {
	NS      NS
	Members []*EtcdMember
	logf    func(string, ...any)
}

// EtcdMember is one member of an EtcdCluster.
type EtcdMember struct {
	Name       string
	Endpoint   string // client URL, e.g. http://10.99.37.1:23790
	ClientPort int
	PeerURL    string
	Dir        string
	LogPath    string
	ns         NS
	initial    string
	host       string
	proc       *Process
}

// StartEtcdCluster starts size members with client ports basePort,
// basePort+10, ... (peer port: client port + 1) and waits until the cluster
// serves requests. Close stops them.
func (c *Cluster) StartEtcdCluster(size, basePort int) (*EtcdCluster, error) {
	ec := &EtcdCluster{NS: c.Underlay.NS, logf: c.Cfg.Logf}
	host := c.Underlay.Gateway.String()
	var initial []string
	for i := 0; i < size; i++ {
		port := basePort + 10*i
		m := &EtcdMember{
			Name:       fmt.Sprintf("m%d", i),
			ClientPort: port,
			Endpoint:   fmt.Sprintf("http://%s:%d", host, port),
			PeerURL:    fmt.Sprintf("http://%s:%d", host, port+1),
			Dir:        filepath.Join(c.Dir, fmt.Sprintf("etcd-m%d", i)),
			LogPath:    filepath.Join(c.Dir, fmt.Sprintf("etcd-m%d.log", i)),
			ns:         c.Underlay.NS,
			host:       host,
		}
		if err := os.MkdirAll(m.Dir, 0o700); err != nil {
			return nil, err
		}
		initial = append(initial, m.Name+"="+m.PeerURL)
		ec.Members = append(ec.Members, m)
	}
	c.onClose(ec.Stop)
	for _, m := range ec.Members {
		m.initial = strings.Join(initial, ",")
		if err := m.Start(); err != nil {
			ec.Stop()
			return nil, err
		}
	}
	if err := ec.waitHealthy(30 * time.Second); err != nil {
		ec.Stop()
		return nil, err
	}
	ec.logf("harness: etcd cluster of %d serving at %s", size, ec.EndpointList())
	return ec, nil
}

// Start launches the member (again, after Stop/Kill: same data dir). It
// does not wait: a member of a new cluster can only serve once a quorum runs.
func (m *EtcdMember) Start() error {
	if m.proc != nil && m.proc.Running() {
		return nil
	}
	state := "new"
	if _, err := os.Stat(filepath.Join(m.Dir, "data", "member")); err == nil {
		state = "existing"
	}
	cmd := m.ns.Command(context.Background(), "etcd",
		"--name", m.Name,
		"--data-dir", filepath.Join(m.Dir, "data"),
		"--listen-client-urls", fmt.Sprintf("%s,http://127.0.0.1:%d", m.Endpoint, m.ClientPort),
		"--advertise-client-urls", m.Endpoint,
		"--listen-peer-urls", m.PeerURL,
		"--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", m.initial,
		"--initial-cluster-state", state,
		"--initial-cluster-token", "wgcni-harness",
		"--logger", "zap",
		"--log-level", "warn",
	)
	p, err := startProcess("etcd "+m.Name, cmd, m.LogPath)
	if err != nil {
		return err
	}
	m.proc = p
	return nil
}

// Stop stops the member with SIGTERM (then SIGKILL), keeping its data.
func (m *EtcdMember) Stop() {
	if m.proc != nil {
		m.proc.Stop(5 * time.Second)
	}
}

// Kill stops the member with SIGKILL.
func (m *EtcdMember) Kill() {
	if m.proc != nil {
		m.proc.Kill()
	}
}

// Running reports whether the member's process runs.
func (m *EtcdMember) Running() bool { return m.proc != nil && m.proc.Running() }

// Stop stops every member.
func (ec *EtcdCluster) Stop() {
	var wg sync.WaitGroup
	for _, m := range ec.Members {
		wg.Add(1)
		go func() { defer wg.Done(); m.Stop() }()
	}
	wg.Wait()
}

// EndpointList is the comma-separated client URLs, for --etcd-endpoints.
func (ec *EtcdCluster) EndpointList() string {
	var eps []string
	for _, m := range ec.Members {
		eps = append(eps, m.Endpoint)
	}
	return strings.Join(eps, ",")
}

// Client returns a client for the test process, dialing from inside the
// underlay namespace (see Etcd.Client).
func (ec *EtcdCluster) Client() (*clientv3.Client, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := ec.NS.Do(func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}
	var eps []string
	for _, m := range ec.Members {
		eps = append(eps, m.Endpoint)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", eps, err)
	}
	return cli, nil
}

func (ec *EtcdCluster) waitHealthy(timeout time.Duration) error {
	cli, err := ec.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	return WaitFor(timeout, "etcd cluster "+ec.EndpointList(), func() (bool, error) {
		for _, m := range ec.Members {
			if !m.Running() {
				return false, fmt.Errorf("member %s exited (log %s)", m.Name, m.LogPath)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "health")
		return err == nil, err
	})
}
