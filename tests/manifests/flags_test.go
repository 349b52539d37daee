package manifests

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
)

// wgcnidFlags is the wgcnid flag set from the contracts (contracts.md, "wgcnid
// CLI"), each with a check of the value's syntax. It stands in for the real
// flag set until daemon/wgcnid exposes one the tests can import.
var wgcnidFlags = map[string]func(string) error{
	"config":             absPath,
	"etcd-endpoints":     endpointList,
	"etcd-prefix":        etcdPrefix,
	"etcd-cafile":        absPath,
	"etcd-certfile":      absPath,
	"etcd-keyfile":       absPath,
	"node-name":          nonEmpty,
	"cluster-cidr":       cidr,
	"node-prefix-len":    intIn(1, 128),
	"endpoint-ip":        ipAddr,
	"listen-port":        intIn(1, 65535),
	"device":             ifName,
	"bridge":             ifName,
	"state-dir":          absPath,
	"run-dir":            absPath,
	"lease-ttl":          positiveDuration,
	"keepalive":          duration,
	"mtu":                intIn(0, 65535),
	"wireguard":          oneOf("auto", "kernel", "userspace"),
	"device-host":        oneOf("spawn", "external"),
	"resync-interval":    positiveDuration,
	"log-format":         oneOf("text", "json"),
	"log-level":          oneOf("debug", "info", "warn", "error"),
	"metrics-addr":       hostPort,
	"cni-conflist":       absPath,
	"cni-conf-dir":       absPath,
	"pod-cidr-from-node": oneOf("true", "false"),
}

// checkFlagValue validates one flag: known name, well-formed value.
func checkFlagValue(name, value string) error {
	check, ok := wgcnidFlags[name]
	if !ok {
		return fmt.Errorf("unknown wgcnid flag --%s", name)
	}
	if err := check(value); err != nil {
		return fmt.Errorf("--%s=%q: %w", name, value, err)
	}
	return nil
}

func hostPort(v string) error {
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		return err
	}
	return intIn(1, 65535)(port)
}

func nonEmpty(v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("empty")
	}
	return nil
}

func absPath(v string) error {
	if !path.IsAbs(v) || path.Clean(v) != v {
		return fmt.Errorf("not a clean absolute path")
	}
	return nil
}

func etcdPrefix(v string) error {
	if !strings.HasPrefix(v, "/") || strings.HasSuffix(v, "/") {
		return fmt.Errorf("must start and not end with /")
	}
	return nil
}

func endpointList(v string) error {
	for _, e := range strings.Split(v, ",") {
		u, err := url.Parse(e)
		if err != nil {
			return err
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("endpoint %q is not http(s)://host:port", e)
		}
	}
	return nil
}

func cidr(v string) error {
	_, n, err := net.ParseCIDR(v)
	if err != nil {
		return err
	}
	if n.String() != v {
		return fmt.Errorf("host bits set (network is %s)", n)
	}
	return nil
}

func ipAddr(v string) error {
	if net.ParseIP(v) == nil {
		return fmt.Errorf("not an IP address")
	}
	return nil
}

func intIn(lo, hi int) func(string) error {
	return func(v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return err
		}
		if n < lo || n > hi {
			return fmt.Errorf("out of range [%d, %d]", lo, hi)
		}
		return nil
	}
}

func duration(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return err
	}
	if d < 0 {
		return fmt.Errorf("negative")
	}
	return nil
}

func positiveDuration(v string) error {
	if err := duration(v); err != nil {
		return err
	}
	if d, _ := time.ParseDuration(v); d == 0 {
		return fmt.Errorf("must be > 0")
	}
	return nil
}

func ifName(v string) error {
	if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ \t") {
		return fmt.Errorf("not a valid interface name (1-15 chars, no / or space)")
	}
	return nil
}

func oneOf(vals ...string) func(string) error {
	return func(v string) error {
		for _, a := range vals {
			if v == a {
				return nil
			}
		}
		return fmt.Errorf("want one of %s", strings.Join(vals, "|"))
	}
}
