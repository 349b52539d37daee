package etcdboot

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/kubeapi"
)

// secretStore answers the Secret calls of the API server the way it does
// (create 409 on an existing name, replace 409 on a stale
// resourceVersion); the real API server answers them in tests/kube.
type secretStore struct {
	mu      sync.Mutex
	secrets map[string]kubeapi.Secret
	rv      int
}

func (st *secretStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st.mu.Lock()
	defer st.mu.Unlock()
	name := strings.TrimPrefix(r.URL.Path, "/api/v1/namespaces/wgcni-system/secrets")
	name = strings.TrimPrefix(name, "/")
	var in kubeapi.Secret
	if r.Method != http.MethodGet {
		_ = json.NewDecoder(r.Body).Decode(&in)
	}
	cur, exists := st.secrets[name]
	switch r.Method {
	case http.MethodGet:
		if !exists {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(cur)
		return
	case http.MethodPost:
		if _, ok := st.secrets[in.Metadata.Name]; ok {
			w.WriteHeader(http.StatusConflict)
			return
		}
	case http.MethodPut:
		if !exists || in.Metadata.ResourceVersion != cur.Metadata.ResourceVersion {
			w.WriteHeader(http.StatusConflict)
			return
		}
	}
	st.rv++
	in.Metadata.ResourceVersion = strconv.Itoa(st.rv)
	st.secrets[in.Metadata.Name] = in
	w.WriteHeader(http.StatusCreated)
}

func TestCertsSecrets(t *testing.T) {
	st := &secretStore{secrets: map[string]kubeapi.Secret{}}
	srv := httptest.NewTLSServer(st)
	defer srv.Close()
	api := &kubeapi.Client{Server: srv.URL, HTTP: srv.Client()}
	o := &Options{Namespace: "wgcni-system", CASecret: "wgcni-etcd-ca", ClientSecret: "wgcni-etcd",
		HostIP: netip.MustParseAddr("10.0.0.5"), ClientPort: 2479, User: "wgcni-node",
		CAValidity: 48 * time.Hour, CertValidity: 24 * time.Hour}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	run := func() {
		t.Helper()
		o.Dir = t.TempDir()
		if err := Certs(ctx, api, o, log); err != nil {
			t.Fatal(err)
		}
	}

	run()
	first := st.secrets["wgcni-etcd"]
	if got := string(first.Data["endpoints"]); got != "https://10.0.0.5:2479" {
		t.Errorf("endpoints %q", got)
	}
	// A restart on the same node keeps the CA and the client Secret.
	run()
	if st.secrets["wgcni-etcd"].Metadata.ResourceVersion != first.Metadata.ResourceVersion {
		t.Error("an unchanged client Secret was rewritten")
	}
	// The pod moved to another node: new endpoint, same CA.
	ca := string(st.secrets["wgcni-etcd-ca"].Data["ca.crt"])
	o.HostIP = netip.MustParseAddr("10.0.0.6")
	run()
	if got := string(st.secrets["wgcni-etcd"].Data["endpoints"]); got != "https://10.0.0.6:2479" {
		t.Errorf("after a move: endpoints %q", got)
	}
	if string(st.secrets["wgcni-etcd-ca"].Data["ca.crt"]) != ca || string(st.secrets["wgcni-etcd"].Data["ca.crt"]) != ca {
		t.Error("the CA changed")
	}
	// An operator's Secret (the external-etcd switch) is never touched.
	ext := kubeapi.NewSecret("wgcni-system", "wgcni-etcd", nil, map[string][]byte{"endpoints": []byte("https://etcd.example:2379")})
	ext.Metadata.ResourceVersion = "ext"
	st.secrets["wgcni-etcd"] = *ext
	o.Dir = t.TempDir()
	err := Certs(ctx, api, o, log)
	if err == nil || !strings.Contains(err.Error(), "external etcd") {
		t.Errorf("with an operator's Secret: %v, want a refusal naming the external etcd", err)
	}
	if string(st.secrets["wgcni-etcd"].Data["endpoints"]) != "https://etcd.example:2379" {
		t.Error("the operator's Secret was changed")
	}
}
