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
}

// pqFlags registers the post-quantum flags.
func pqFlags(fs *flag.FlagSet, c *PostQuantum) {
	fs.StringVar(&c.Mode, "post-quantum", PQOff, "post-quantum preshared keys per peer from ML-KEM exchanges: off, on (with every peer that supports it) or required (pod traffic to a peer without one is dropped)")
	fs.DurationVar(&c.Interval, "pq-interval", 2*time.Minute, "how often each peer pair derives a fresh post-quantum preshared key (at most 2m keeps every WireGuard session's key at most two intervals old)")
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
	if pq.Port == 0 {
		pq.Port = c.ListenPort + 2
	}
	if pq.Port < 1 || pq.Port > 65535 || pq.Port == c.ListenPort || pq.Port == c.SameNodePort {
		return fmt.Errorf("--pq-port: %d is out of range 1..65535 or equals --listen-port or --same-node-port", pq.Port)
	}
	return nil
}
