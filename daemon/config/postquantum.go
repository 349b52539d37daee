package config

import (
	"flag"
	"fmt"
	"time"
)

// Post-quantum modes (--post-quantum, docs/post-quantum.md).
const (
	// PQOff: no ML-KEM key is published and no exchange runs.
	PQOff = "off"
	// PQOn: preshared keys with every peer that publishes an ML-KEM key;
	// peers that do not (older daemons) stay classical.
	PQOn = "on"
	// PQRequired: pod traffic to a peer without a preshared key from an
	// exchange is dropped, never sent classical-only.
	PQRequired = "required"
)

// PostQuantum is the post-quantum part of the configuration.
type PostQuantum struct {
	Mode     string        // PQOff, PQOn or PQRequired
	Interval time.Duration // between exchanges with one peer
	Port     int           // UDP port of the exchange; 0: ListenPort+2
	// MaxAge: in required mode, a peer whose last successful exchange
	// is older is held again (fail closed) until a fresh one succeeds;
	// 0: DefaultMaxAgeIntervals x Interval.
	MaxAge time.Duration
}

// DefaultMaxAgeIntervals is --pq-max-age's default in intervals: three
// lets two exchanges in a row fail (a lost packet, a restarting peer)
// before a peer is held, while a blocked exchange still holds it within
// minutes (6m at the default 2m interval).
const DefaultMaxAgeIntervals = 3

// pqFlags registers the post-quantum flags.
func pqFlags(fs *flag.FlagSet, c *PostQuantum) {
	fs.StringVar(&c.Mode, "post-quantum", PQOff, "post-quantum preshared keys per peer from ML-KEM exchanges: off, on (with every peer that supports it) or required (pod traffic to a peer without one is dropped)")
	fs.DurationVar(&c.Interval, "pq-interval", 2*time.Minute, "how often each peer pair derives a fresh post-quantum preshared key (at most 2m keeps every WireGuard session's key at most two intervals old)")
	fs.DurationVar(&c.MaxAge, "pq-max-age", 0, "required mode: a peer whose last successful post-quantum exchange is older than this is held again (its pod traffic dropped) until a fresh exchange succeeds; at least 2 x --pq-interval (0 = 3 x --pq-interval)")
	fs.IntVar(&c.Port, "pq-port", 0, "UDP port of the post-quantum key exchange, on the tunnel and underlay addresses (0 = listen-port + 2)")
}

// validatePQ checks the post-quantum flags against the ports in use.
func (c *Config) validatePQ() error {
	pq := &c.PostQuantum
	switch pq.Mode {
	case PQOff, PQOn, PQRequired:
	default:
		return fmt.Errorf("--post-quantum: %q is not off, on or required", pq.Mode)
	}
	if pq.Interval < time.Second {
		return fmt.Errorf("--pq-interval: %s is shorter than 1s", pq.Interval)
	}
	if pq.MaxAge == 0 {
		pq.MaxAge = DefaultMaxAgeIntervals * pq.Interval
	}
	// Shorter than two intervals, one late or retried exchange would
	// hold a healthy peer.
	if pq.MaxAge < 2*pq.Interval {
		return fmt.Errorf("--pq-max-age: %s is shorter than 2 x --pq-interval (%s)", pq.MaxAge, 2*pq.Interval)
	}
	if pq.Port == 0 {
		pq.Port = c.ListenPort + 2
	}
	if pq.Port < 1 || pq.Port > 65535 || pq.Port == c.ListenPort || pq.Port == c.SameNodePort {
		return fmt.Errorf("--pq-port: %d is out of range 1..65535 or equals --listen-port or --same-node-port", pq.Port)
	}
	return nil
}
