package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"testing"
	"time"
)

func TestIssueVerifies(t *testing.T) {
	ca, err := NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadCA(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatalf("LoadCA of a fresh CA: %v", err)
	}
	for _, tc := range []struct {
		spec  Spec
		usage x509.ExtKeyUsage
		host  string
	}{
		{Spec{CommonName: "wgcni-node", Validity: time.Hour}, x509.ExtKeyUsageClientAuth, ""},
		{Spec{CommonName: "etcd", Server: true, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, DNSNames: []string{"localhost"}, Validity: 10 * time.Hour}, x509.ExtKeyUsageServerAuth, "10.0.0.1"},
	} {
		c, k, err := again.Issue(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatalf("%s: %v", tc.spec.CommonName, err)
		}
		cert := pair.Leaf
		if cert == nil {
			cert, _ = x509.ParseCertificate(pair.Certificate[0])
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca.Cert)
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: tc.host, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s does not verify against the CA: %v", tc.spec.CommonName, err)
		}
		if cert.Subject.CommonName != tc.spec.CommonName {
			t.Errorf("CN %q, want %q", cert.Subject.CommonName, tc.spec.CommonName)
		}
		if cert.NotAfter.After(ca.Cert.NotAfter) {
			t.Errorf("%s outlives its CA", tc.spec.CommonName)
		}
	}
}

func TestLoadCARefusesMismatch(t *testing.T) {
	a, _ := NewCA("a", time.Hour)
	b, _ := NewCA("b", time.Hour)
	if _, err := LoadCA(a.CertPEM, b.KeyPEM); err == nil {
		t.Error("LoadCA accepted another CA's key")
	}
	if _, err := LoadCA([]byte("junk"), a.KeyPEM); err == nil {
		t.Error("LoadCA accepted a non-PEM certificate")
	}
	leaf, lk, _ := a.Issue(Spec{CommonName: "x", Validity: time.Hour})
	if _, err := LoadCA(leaf, lk); err == nil {
		t.Error("LoadCA accepted a leaf certificate as a CA")
	}
}
