// Package kubeapi is the little of the Kubernetes API wgcni uses, over
// plain HTTPS with the pod's ServiceAccount token (in-cluster): read a
// Node's spec.podCIDRs, and get, create and replace Secrets. wgcni does
// not need client-go's caches and watches for that.
package kubeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ServiceAccountDir is where the kubelet mounts the pod's token and CA.
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// ErrNotFound is the API's 404; ErrConflict its 409 (already exists, or a
// stale resourceVersion).
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// Client talks to one API server.
type Client struct {
	// Server is the API server's base URL, e.g. https://10.96.0.1:443.
	Server string
	// TokenFile is re-read on every request: the kubelet rotates it.
	TokenFile string
	HTTP      *http.Client
}

// InCluster is the client of a pod: KUBERNETES_SERVICE_HOST/PORT, the
// token and CA in dir (ServiceAccountDir unless testing).
func InCluster(dir string) (*Client, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("kubeapi: KUBERNETES_SERVICE_HOST/PORT not set: not running in a Kubernetes pod")
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("kubeapi: API server CA (is the ServiceAccount token mounted?): %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("kubeapi: %s/ca.crt holds no certificate", dir)
	}
	return &Client{
		Server:    "https://" + net.JoinHostPort(host, port),
		TokenFile: filepath.Join(dir, "token"),
		HTTP: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		}},
	}, nil
}

// do sends one request; out (if not nil) receives the JSON answer.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Server+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.TokenFile != "" {
		tok, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return fmt.Errorf("kubeapi: token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("kubeapi: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("kubeapi: %s %s: %w", method, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("kubeapi: %s %s: %w", method, path, ErrNotFound)
	case resp.StatusCode == http.StatusConflict:
		return fmt.Errorf("kubeapi: %s %s: %w", method, path, ErrConflict)
	case resp.StatusCode/100 != 2:
		// The API's Status object says why (e.g. RBAC's "forbidden").
		var st struct{ Message string }
		_ = json.Unmarshal(data, &st)
		if st.Message == "" {
			st.Message = strings.TrimSpace(string(data))
		}
		return fmt.Errorf("kubeapi: %s %s: %s: %s", method, path, resp.Status, st.Message)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("kubeapi: %s %s: decode: %w", method, path, err)
		}
	}
	return nil
}

// ObjectMeta is the part of metadata wgcni reads and writes.
type ObjectMeta struct {
	Name            string            `json:"name"`
	Namespace       string            `json:"namespace,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	ResourceVersion string            `json:"resourceVersion,omitempty"`
}

// Secret is a v1 Secret (data is base64 on the wire: []byte in JSON).
type Secret struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   ObjectMeta        `json:"metadata"`
	Type       string            `json:"type,omitempty"`
	Data       map[string][]byte `json:"data"`
}

// NewSecret is an Opaque Secret named name in namespace ns.
func NewSecret(ns, name string, labels map[string]string, data map[string][]byte) *Secret {
	return &Secret{APIVersion: "v1", Kind: "Secret", Type: "Opaque",
		Metadata: ObjectMeta{Name: name, Namespace: ns, Labels: labels}, Data: data}
}

func secretPath(ns, name string) string {
	p := "/api/v1/namespaces/" + ns + "/secrets"
	if name != "" {
		p += "/" + name
	}
	return p
}

// GetSecret reads a Secret (ErrNotFound if absent).
func (c *Client) GetSecret(ctx context.Context, ns, name string) (*Secret, error) {
	var s Secret
	if err := c.do(ctx, http.MethodGet, secretPath(ns, name), nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// CreateSecret creates s (ErrConflict if it exists).
func (c *Client) CreateSecret(ctx context.Context, s *Secret) error {
	return c.do(ctx, http.MethodPost, secretPath(s.Metadata.Namespace, ""), s, nil)
}

// ReplaceSecret replaces s; its resourceVersion must be the current one
// (ErrConflict otherwise), so a concurrent change is never overwritten.
func (c *Client) ReplaceSecret(ctx context.Context, s *Secret) error {
	return c.do(ctx, http.MethodPut, secretPath(s.Metadata.Namespace, s.Metadata.Name), s, nil)
}

// NodePodCIDRs returns a Node's spec.podCIDRs (spec.podCIDR when the list
// is empty, as on old API servers); empty if none is allocated yet.
func (c *Client) NodePodCIDRs(ctx context.Context, node string) ([]string, error) {
	var n struct {
		Spec struct {
			PodCIDR  string   `json:"podCIDR"`
			PodCIDRs []string `json:"podCIDRs"`
		} `json:"spec"`
	}
	if err := c.do(ctx, http.MethodGet, "/api/v1/nodes/"+node, nil, &n); err != nil {
		return nil, err
	}
	if len(n.Spec.PodCIDRs) == 0 && n.Spec.PodCIDR != "" {
		return []string{n.Spec.PodCIDR}, nil
	}
	return n.Spec.PodCIDRs, nil
}

// WaitNodePodCIDRs polls a Node until the controller-manager has given it
// PodCIDRs (moments after the node registers) or wait is over, and
// returns them parsed; nil if there are none by then.
func (c *Client) WaitNodePodCIDRs(ctx context.Context, node string, wait time.Duration) ([]netip.Prefix, error) {
	deadline := time.Now().Add(wait)
	for {
		cidrs, err := c.NodePodCIDRs(ctx, node)
		if err == nil && len(cidrs) > 0 {
			var out []netip.Prefix
			for _, s := range cidrs {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					return nil, fmt.Errorf("kubeapi: node %s: spec.podCIDRs: %w", node, err)
				}
				out = append(out, p.Masked())
			}
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}
