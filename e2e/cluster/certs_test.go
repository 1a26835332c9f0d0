package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestClusterPKI checks what the components rely on: the API server's
// certificate verifies against the CA for every name pods and hosts use, and
// each client certificate carries the identity RBAC and the Node authorizer
// expect.
func TestClusterPKI(t *testing.T) {
	dir := t.TempDir()
	nodes := []node{{Name: "node-1", IP: nodeIP(1)}}
	p, err := writeClusterPKI(dir, nodes)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p.caFile())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	load := func(name string) *x509.Certificate {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(p.certFile(name), p.keyFile(name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return pair.Leaf
	}
	verify := func(name, host string, usage x509.ExtKeyUsage) {
		t.Helper()
		_, err := load(name).Verify(x509.VerifyOptions{DNSName: host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}})
		if err != nil {
			t.Errorf("%s for %q: %v", name, host, err)
		}
	}
	for _, host := range []string{apiAddress, "127.0.0.1", kubernetesSvc, "kubernetes.default.svc.cluster.local"} {
		verify("apiserver", host, x509.ExtKeyUsageServerAuth)
	}
	verify("kubelet-node-1-serving", nodeIP(1), x509.ExtKeyUsageServerAuth)
	for name, want := range map[string][2]string{
		"admin":               {"kubernetes-admin", "system:masters"},
		"controller-manager":  {"system:kube-controller-manager", ""},
		"scheduler":           {"system:kube-scheduler", ""},
		"kube-proxy":          {"system:kube-proxy", ""},
		"kubelet-node-1":      {"system:node:node-1", "system:nodes"},
		"snapshot-controller": {snapshotControllerUser, ""},
	} {
		verify(name, "", x509.ExtKeyUsageClientAuth)
		c := load(name)
		if c.Subject.CommonName != want[0] || (want[1] != "" && !slices.Contains(c.Subject.Organization, want[1])) {
			t.Errorf("%s: subject %v, want CN=%s O=%s", name, c.Subject, want[0], want[1])
		}
	}
	// Only its ClusterRole's rights: no group that RBAC grants more to.
	if orgs := load("snapshot-controller").Subject.Organization; len(orgs) != 0 {
		t.Errorf("snapshot-controller: organizations %v, want none", orgs)
	}
	for _, f := range []string{"ca.key", "sa.key"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Error(err)
		} else if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, st.Mode().Perm())
		}
	}
}
