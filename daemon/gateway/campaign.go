package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/record"
)

// leaseFile remembers the candidacy's etcd lease in the state dir: a
// restarted daemon whose lease is still alive campaigns on it again, so
// its election keys (and their place in the queue) stay, and a restart
// of the serving gateway moves nothing.
const leaseFile = "gateway-lease"

// Campaigner is the gateway side: one etcd session (a lease kept alive),
// and on it one concurrency.Election campaign per advertised site. The
// oldest live candidate leads; a gateway that comes back after its
// session died campaigns anew and queues behind the incumbent, so
// failback never flaps. It runs after the node's record (which the
// candidates point at) is published.
type Campaigner struct {
	Client   *clientv3.Client
	Prefix   string
	Node     string
	Record   netip.Prefix // this node's record key CIDR
	Sites    []netip.Prefix
	TTL      time.Duration
	StateDir string
	Log      *slog.Logger

	mu      sync.Mutex
	leading map[netip.Prefix]bool
}

// Leading reports whether this node won site's election (and its
// session is alive as far as it knows).
func (c *Campaigner) Leading(site netip.Prefix) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leading[site]
}

func (c *Campaigner) setLeading(site netip.Prefix, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leading == nil {
		c.leading = map[netip.Prefix]bool{}
	}
	c.leading[site] = on
}

// Run campaigns until ctx ends. It never resigns a won election on its
// own: on SIGTERM the keys stay bound to the lease, for a restart to
// adopt within the TTL; `wgcnid cleanup` (Withdraw) gives them up.
func (c *Campaigner) Run(ctx context.Context) {
	bo := etcdutil.Backoff{Min: 500 * time.Millisecond, Max: max(c.TTL/3, time.Second)}
	for ctx.Err() == nil {
		s, err := c.session(ctx)
		if err != nil {
			d := bo.Next()
			c.Log.Warn("gateway session could not start; retrying", "err", err, "in", d.Round(time.Millisecond))
			etcdutil.Sleep(ctx, d)
			continue
		}
		bo.Reset()
		cctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for _, site := range c.Sites {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.campaign(cctx, s, site)
			}()
		}
		select {
		case <-ctx.Done():
		case <-s.Done():
			c.Log.Warn("gateway candidacy lost: its etcd lease expired (etcd unreachable for a TTL?); campaigning again behind the current gateways",
				"lease", fmt.Sprintf("%x", int64(s.Lease())), "ttl", c.TTL)
		}
		cancel()
		wg.Wait()
	}
}

// session opens the candidacy's session, on the remembered lease if it
// is still alive.
func (c *Campaigner) session(ctx context.Context) (*concurrency.Session, error) {
	ttl := int(c.TTL / time.Second)
	opts := []concurrency.SessionOption{concurrency.WithTTL(ttl), concurrency.WithContext(ctx)}
	if id, ok := c.remembered(ctx); ok {
		opts = append(opts, concurrency.WithLease(id))
	}
	s, err := concurrency.NewSession(c.Client, opts...)
	if err != nil {
		return nil, err
	}
	if err := nodefile.WriteFileAtomic(filepath.Join(c.StateDir, leaseFile), []byte(strconv.FormatInt(int64(s.Lease()), 16)+"\n"), 0o600); err != nil {
		c.Log.Warn("could not remember the gateway lease; a restart will re-campaign", "err", err)
	}
	return s, nil
}

// remembered returns the remembered lease if etcd still has it with our TTL.
func (c *Campaigner) remembered(ctx context.Context) (clientv3.LeaseID, bool) {
	b, err := os.ReadFile(filepath.Join(c.StateDir, leaseFile))
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := c.Client.TimeToLive(tctx, clientv3.LeaseID(n))
	if err != nil || r.TTL <= 0 || r.GrantedTTL != int64(c.TTL/time.Second) {
		return 0, false
	}
	return clientv3.LeaseID(n), true
}

// campaign stands for one site until ctx ends: Campaign returns once we
// lead (immediately for an adopted key that already led).
func (c *Campaigner) campaign(ctx context.Context, s *concurrency.Session, site netip.Prefix) {
	e := concurrency.NewElection(s, record.ElectionPrefix(c.Prefix, site))
	val := encodeCandidate(c.Node, c.Record)
	bo := etcdutil.Backoff{Min: 500 * time.Millisecond, Max: 5 * time.Second}
	c.Log.Info("gateway candidate for site", "site", site, "lease", fmt.Sprintf("%x", int64(s.Lease())))
	for ctx.Err() == nil {
		err := e.Campaign(ctx, val)
		if err == nil {
			c.setLeading(site, true)
			c.Log.Info("gateway serves site", "site", site, "key", e.Key())
			<-ctx.Done()
			c.setLeading(site, false)
			return
		}
		if ctx.Err() != nil || errors.Is(err, concurrency.ErrSessionExpired) {
			return
		}
		d := bo.Next()
		c.Log.Warn("gateway campaign failed; retrying", "site", site, "err", err, "in", d.Round(time.Millisecond))
		etcdutil.Sleep(ctx, d)
	}
}

// Withdraw gives up this node's candidacies (`wgcnid cleanup`): the
// remembered lease is revoked, so its election keys go at once and
// another gateway takes over without waiting for the TTL.
func Withdraw(ctx context.Context, cli *clientv3.Client, stateDir string) error {
	path := filepath.Join(stateDir, leaseFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 64); err == nil && n != 0 {
		if _, err := cli.Revoke(ctx, clientv3.LeaseID(n)); err != nil && !strings.Contains(err.Error(), "not found") {
			return fmt.Errorf("revoke gateway lease %x: %w", n, err)
		}
	}
	return os.Remove(path)
}
