// Package etcdutil holds the small etcd helpers the lease keeper and the
// mesh share: client construction (TLS), paginated consistent listing, and
// retry backoff.
package etcdutil

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// MaxReconnectDelay bounds how long a client waits between attempts to
// reconnect to an etcd member that went away.
const MaxReconnectDelay = 2 * time.Second

// ClientOptions selects the etcd cluster, its TLS files and, optionally,
// etcd user/password authentication (with client certificates and etcd
// auth enabled, etcd takes the user from the certificate's CommonName and
// no password is needed).
type ClientOptions struct {
	Endpoints                 []string
	CAFile, CertFile, KeyFile string
	Username, Password        string
}

// NewClient returns a client. It does not wait for a connection: the daemon
// must keep retrying (and saying so) when etcd is down at start.
func NewClient(o ClientOptions) (*clientv3.Client, error) {
	tlsCfg, err := o.TLSConfig()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   o.Endpoints,
		DialTimeout: 5 * time.Second,
		TLS:         tlsCfg,
		Username:    o.Username,
		Password:    o.Password,
		// The client's own zap logging is noise next to our slog lines;
		// we log every failure we act on ourselves.
		Logger: zap.NewNop(),
		// Detect a dead connection to a member quickly so the client
		// fails over to another member.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// gRPC's default reconnect backoff grows to 120 s: after a long
		// etcd outage the client would come back up to two minutes after
		// etcd did, by which time etcd (which restores every lease with a
		// full TTL when it starts) may have expired our lease and every
		// peer would drop us. Retry a dead connection at least every 2 s.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: MaxReconnectDelay},
			MinConnectTimeout: 5 * time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", o.Endpoints, err)
	}
	return cli, nil
}

// TLSConfig returns the client TLS configuration, or nil when no TLS file
// was given and no endpoint is https:// (plain http).
func (o ClientOptions) TLSConfig() (*tls.Config, error) {
	if o.CAFile == "" && o.CertFile == "" && !anyHTTPS(o.Endpoints) {
		return nil, nil
	}
	info := transport.TLSInfo{TrustedCAFile: o.CAFile, CertFile: o.CertFile, KeyFile: o.KeyFile}
	c, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS config (--etcd-cafile/--etcd-certfile/--etcd-keyfile): %w", err)
	}
	return c, nil
}

func anyHTTPS(eps []string) bool {
	for _, e := range eps {
		if strings.HasPrefix(e, "https://") {
			return true
		}
	}
	return false
}

// PageSize bounds each range read, so listing thousands of records never
// makes one huge response.
const PageSize = 500

// List returns every key under prefix at one consistent revision, reading
// in pages, and that revision (to start a watch from rev+1).
func List(ctx context.Context, kv clientv3.KV, prefix string) ([]*mvccpb.KeyValue, int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	var rev int64
	var out []*mvccpb.KeyValue
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(PageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := kv.Get(ctx, key, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("list etcd prefix %s: %w", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		out = append(out, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		// Next page starts just after the last key returned.
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Backoff yields exponentially growing, jittered delays between Min and Max.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the next delay.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur *= 2
	}
	if b.cur > b.Max {
		b.cur = b.Max
	}
	// Jitter spreads a fleet of daemons reconnecting after an etcd outage.
	return b.cur/2 + rand.N(b.cur/2+1)
}

// Reset starts over at Min after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Sleep waits d or until ctx is done, reporting whether ctx is still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
