package etcdboot

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wgcni/wgcni/daemon/kubeapi"
)

// Command runs `wgcnid etcd-bootstrap certs|auth [flags]`. auth stays up
// after its work (it runs as a container beside etcd) until SIGTERM.
func Command(args []string, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "certs" && args[0] != "auth") {
		if len(args) == 1 && (args[0] == "--help" || args[0] == "-h" || args[0] == "-help") {
			fmt.Fprintln(stderr, "Usage: wgcnid etcd-bootstrap certs|auth [flags]\n\n"+
				"certs: the CA (Secret), wgcnid's client Secret and etcd's certificates (an init container of conf/kubernetes/15-etcd.yaml)\n"+
				"auth:  once etcd answers, its role, users and authentication (a container beside etcd)")
			_, _ = parse("certs", []string{"--help"}, stderr)
			return 0
		}
		fmt.Fprintln(stderr, "wgcnid etcd-bootstrap: want certs or auth as the first argument")
		return 2
	}
	phase := args[0]
	o, err := parse(phase, args[1:], stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "wgcnid etcd-bootstrap %s: %v\n", phase, err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil)).With("cmd", "etcd-bootstrap "+phase)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch phase {
	case "certs":
		var api *kubeapi.Client
		if api, err = kubeapi.InCluster(kubeapi.ServiceAccountDir); err == nil {
			err = Certs(ctx, api, o, log)
		}
	case "auth":
		if err = Auth(ctx, o, log); err == nil {
			<-ctx.Done()
		}
	}
	if err != nil {
		log.Error("etcd bootstrap failed", "err", err)
		return 1
	}
	return 0
}

func parse(phase string, args []string, stderr io.Writer) (*Options, error) {
	o := &Options{}
	var host string
	fs := flag.NewFlagSet("wgcnid etcd-bootstrap "+phase, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Namespace, "namespace", "wgcni-system", "namespace of the Secrets")
	fs.StringVar(&o.CASecret, "ca-secret", "wgcni-etcd-ca", "Secret holding the etcd CA (made once)")
	fs.StringVar(&o.ClientSecret, "client-secret", "wgcni-etcd", "Secret wgcnid mounts: endpoints, ca.crt, tls.crt, tls.key")
	fs.StringVar(&host, "host-ip", "", "the etcd node's IP: the endpoint wgcnid dials and the serving certificate's address (certs)")
	fs.IntVar(&o.ClientPort, "client-port", 2479, "etcd client port")
	fs.StringVar(&o.Dir, "dir", "/etc/wgcni-etcd/pki", "directory of etcd's serving certificate and the root client certificate")
	fs.StringVar(&o.User, "user", "wgcni-node", "etcd user of wgcnid (its certificate's CommonName)")
	fs.StringVar(&o.Role, "role", "wgcni", "etcd role of that user: read-write on --etcd-prefix only")
	fs.StringVar(&o.Prefix, "etcd-prefix", "/wgcni", "wgcnid's --etcd-prefix")
	fs.DurationVar(&o.CAValidity, "ca-validity", 10*365*24*time.Hour, "lifetime of a new CA")
	fs.DurationVar(&o.CertValidity, "cert-validity", 365*24*time.Hour, "lifetime of issued certificates (re-issued at every etcd pod start, and the client's when 90% used)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if phase == "certs" {
		a, err := netip.ParseAddr(host)
		if err != nil || a.IsUnspecified() {
			return nil, fmt.Errorf("--host-ip: %q is not an IP address", host)
		}
		o.HostIP = a.Unmap()
	}
	if o.ClientPort < 1 || o.ClientPort > 65535 {
		return nil, fmt.Errorf("--client-port: %d is out of range 1..65535", o.ClientPort)
	}
	if !strings.HasPrefix(o.Prefix, "/") || strings.TrimRight(o.Prefix, "/") == "" {
		return nil, fmt.Errorf("--etcd-prefix: %q must start with / and not be /", o.Prefix)
	}
	o.Prefix = strings.TrimRight(o.Prefix, "/")
	for _, f := range []struct{ name, v string }{{"--namespace", o.Namespace}, {"--ca-secret", o.CASecret}, {"--client-secret", o.ClientSecret}, {"--dir", o.Dir}, {"--user", o.User}, {"--role", o.Role}} {
		if f.v == "" {
			return nil, fmt.Errorf("%s: empty", f.name)
		}
	}
	if o.CertValidity <= 0 || o.CAValidity < o.CertValidity {
		return nil, errors.New("--cert-validity must be positive and not longer than --ca-validity")
	}
	return o, nil
}
