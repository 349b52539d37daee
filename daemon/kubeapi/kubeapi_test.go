package kubeapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The client's side of the API's wire format: the token sent, Secret data
// as base64, 404/409 as errors to test with errors.Is, other failures with
// the API's own message. (The real API server answers it in tests/kube.)
func TestWireFormat(t *testing.T) {
	var gotAuth string
	var created map[string]any
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/api/v1/namespaces/ns/secrets/absent":
			w.WriteHeader(http.StatusNotFound)
		case r.Method == http.MethodPost && r.URL.Path == "/api/v1/namespaces/ns/secrets":
			_ = json.NewDecoder(r.Body).Decode(&created)
			w.WriteHeader(http.StatusConflict)
		case r.URL.Path == "/api/v1/nodes/forbidden":
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"kind":"Status","message":"nodes \"forbidden\" is forbidden: User cannot get resource"}`))
		case r.URL.Path == "/api/v1/nodes/n1":
			_, _ = w.Write([]byte(`{"spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24","fd00:1::/64"]}}`))
		case r.URL.Path == "/api/v1/nodes/old":
			_, _ = w.Write([]byte(`{"spec":{"podCIDR":"10.244.2.0/24"}}`))
		default:
			w.WriteHeader(http.StatusTeapot)
		}
	}))
	defer srv.Close()
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("secret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &Client{Server: srv.URL, TokenFile: tok, HTTP: srv.Client()}
	ctx := context.Background()

	if _, err := c.GetSecret(ctx, "ns", "absent"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetSecret of an absent Secret: %v, want ErrNotFound", err)
	}
	if gotAuth != "Bearer secret-token" {
		t.Errorf("Authorization %q", gotAuth)
	}
	err := c.CreateSecret(ctx, NewSecret("ns", "s", nil, map[string][]byte{"k": []byte("v\x00")}))
	if !errors.Is(err, ErrConflict) {
		t.Errorf("CreateSecret answered 409: %v, want ErrConflict", err)
	}
	if d, _ := created["data"].(map[string]any); d["k"] != "dgA=" {
		t.Errorf("Secret data on the wire: %v, want base64", created["data"])
	}
	if _, err := c.NodePodCIDRs(ctx, "forbidden"); err == nil || !strings.Contains(err.Error(), "is forbidden") {
		t.Errorf("403: %v, want the API's message", err)
	}
	got, err := c.WaitNodePodCIDRs(ctx, "n1", time.Second)
	if err != nil || len(got) != 2 || got[1] != netip.MustParsePrefix("fd00:1::/64") {
		t.Errorf("podCIDRs: %v, %v", got, err)
	}
	if got, err := c.NodePodCIDRs(ctx, "old"); err != nil || len(got) != 1 || got[0] != "10.244.2.0/24" {
		t.Errorf("podCIDR only: %v, %v", got, err)
	}
}

func TestInClusterNeedsEnv(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := InCluster(t.TempDir()); err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Errorf("InCluster outside a pod: %v", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if _, err := InCluster(t.TempDir()); err == nil || !strings.Contains(err.Error(), "ca.crt") {
		t.Errorf("InCluster without a CA: %v", err)
	}
}
