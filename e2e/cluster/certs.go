package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certValidity is long enough for any test run; the cluster is thrown away
// with its PKI.
const certValidity = 365 * 24 * time.Hour

// pki is the cluster's certificate authority. Keys are ECDSA P-256: every
// component accepts them and they are made in microseconds, where RSA keys
// would cost a noticeable part of a warm start.
type pki struct {
	dir  string
	cert *x509.Certificate
	key  crypto.Signer
}

// certSpec describes a certificate the CA issues.
type certSpec struct {
	commonName string
	orgs       []string
	ips        []string
	dnsNames   []string
	server     bool
	client     bool
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// newPKI makes a CA and writes ca.crt and ca.key in dir.
func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "stickyvol-cluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p := &pki{dir: dir, cert: cert, key: key}
	return p, p.write("ca", der, key)
}

// caFile is the path of the CA certificate.
func (p *pki) caFile() string { return filepath.Join(p.dir, "ca.crt") }

// certFile and keyFile are the paths of an issued certificate and its key.
func (p *pki) certFile(name string) string { return filepath.Join(p.dir, name+".crt") }
func (p *pki) keyFile(name string) string  { return filepath.Join(p.dir, name+".key") }

// issue makes a key and a certificate signed by the CA and writes them as
// <name>.crt and <name>.key.
func (p *pki) issue(name string, spec certSpec) error {
	key, err := newKey()
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: spec.commonName, Organization: spec.orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     spec.dnsNames,
	}
	for _, s := range spec.ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("certificate %s: bad IP %q", name, s)
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	}
	if spec.server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if spec.client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		return fmt.Errorf("certificate %s: %w", name, err)
	}
	return p.write(name, der, key)
}

func (p *pki) write(name string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return errors.Join(
		writeFileAtomic(p.certFile(name), certPEM, 0o644),
		writeFileAtomic(p.keyFile(name), keyPEM, 0o600))
}

// writeServiceAccountKey writes the key pair that signs service account
// tokens: sa.key (private, for kube-apiserver and kube-controller-manager)
// and sa.pub (public, for kube-apiserver).
func (p *pki) writeServiceAccountKey() error {
	key, err := newKey()
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	return errors.Join(
		writeFileAtomic(p.keyFile("sa"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600),
		writeFileAtomic(filepath.Join(p.dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644))
}

// writeClusterPKI writes every certificate the cluster needs. Each component
// has the identity it has in a kubeadm cluster, so RBAC and the Node
// authorizer see the same users they see in production.
func writeClusterPKI(dir string, nodes []node) (*pki, error) {
	p, err := newPKI(dir)
	if err != nil {
		return nil, err
	}
	specs := map[string]certSpec{
		"apiserver": {
			commonName: "kube-apiserver",
			ips:        []string{apiAddress, "127.0.0.1", kubernetesSvc},
			dnsNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
				"kubernetes.default.svc." + clusterDomain},
			server: true,
		},
		"apiserver-kubelet-client": {commonName: "kube-apiserver-kubelet-client", client: true},
		"admin":                    {commonName: "kubernetes-admin", orgs: []string{"system:masters"}, client: true},
		"controller-manager":       {commonName: "system:kube-controller-manager", client: true},
		"scheduler":                {commonName: "system:kube-scheduler", client: true},
		"kube-proxy":               {commonName: "system:kube-proxy", client: true},
		snapshotControllerUser:     {commonName: snapshotControllerUser, client: true},
	}
	for _, n := range nodes {
		specs["kubelet-"+n.Name] = certSpec{commonName: "system:node:" + n.Name, orgs: []string{"system:nodes"}, client: true}
		specs["kubelet-"+n.Name+"-serving"] = certSpec{commonName: n.Name, ips: []string{n.IP}, dnsNames: []string{n.Name}, server: true}
	}
	for name, spec := range specs {
		if err := p.issue(name, spec); err != nil {
			return nil, err
		}
	}
	return p, p.writeServiceAccountKey()
}
