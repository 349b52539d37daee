package etcdutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Explain adds the reason an operator can act on to an etcd failure. The
// gRPC client reports a refused client certificate or an untrusted server
// only as "context deadline exceeded"; Explain probes each https endpoint
// with the same TLS settings to tell those apart, and names the flags to
// fix. It returns err unchanged when it finds nothing more to say.
func Explain(ctx context.Context, o ClientOptions, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrUserEmpty), errors.Is(err, rpctypes.ErrInvalidAuthToken),
		errors.Is(err, rpctypes.ErrAuthNotEnabled), errors.Is(err, rpctypes.ErrUserNotFound):
		return fmt.Errorf("%w: etcd refused our credentials (--etcd-username/--etcd-password-file, or the client certificate's CommonName when etcd auth is on)", err)
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		return fmt.Errorf("%w: the etcd user lacks a permission; it needs readwrite on the prefix (docs/security.md: least-privilege etcd role)", err)
	}
	cfg, terr := o.TLSConfig()
	if terr != nil {
		return fmt.Errorf("%w; %v", err, terr)
	}
	var why []string
	for _, ep := range o.Endpoints {
		if d := probe(ctx, ep, cfg); d != "" {
			why = append(why, d)
		}
	}
	if len(why) == 0 {
		return err
	}
	return fmt.Errorf("%w; %s", err, strings.Join(why, "; "))
}

// probe opens one TLS connection to an https endpoint and reports what is
// wrong with it, or "" when the handshake is accepted.
func probe(ctx context.Context, ep string, base *tls.Config) string {
	u, err := url.Parse(ep)
	if err != nil || u.Scheme != "https" || base == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return fmt.Sprintf("etcd %s unreachable: %v", ep, err)
	}
	defer raw.Close()
	cfg := base.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	conn := tls.Client(raw, cfg)
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	err = conn.HandshakeContext(ctx)
	if err == nil {
		// With TLS 1.3 the server judges our certificate after the
		// handshake: its refusal arrives as an alert on the first read. A
		// read that just times out means we were accepted.
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err = conn.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			return ""
		}
	}
	var ua x509.UnknownAuthorityError
	var cv *tls.CertificateVerificationError
	var hn x509.HostnameError
	switch {
	case errors.As(err, &ua), errors.As(err, &cv), errors.As(err, &hn):
		return fmt.Sprintf("etcd %s: its server certificate is not trusted (--etcd-cafile): %v", ep, err)
	case strings.Contains(err.Error(), "remote error: tls:"):
		if len(cfg.Certificates) == 0 && cfg.GetClientCertificate == nil {
			return fmt.Sprintf("etcd %s requires a client certificate and none was given (--etcd-certfile/--etcd-keyfile): %v", ep, err)
		}
		return fmt.Sprintf("etcd %s refused our client certificate (--etcd-certfile/--etcd-keyfile: it must be signed by a CA etcd trusts, for clientAuth): %v", ep, err)
	default:
		return fmt.Sprintf("etcd %s: TLS handshake failed: %v", ep, err)
	}
}
