package cluster

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const kubeconfigContext = "stickyvol"

// writeKubeconfig writes a kubeconfig for the user whose certificate is
// <user>.crt in the PKI, with the certificates embedded so that the file
// works on its own.
func writeKubeconfig(path, server string, p *pki, user string) error {
	ca, err := os.ReadFile(p.caFile())
	if err != nil {
		return err
	}
	cert, err := os.ReadFile(p.certFile(user))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(p.keyFile(user))
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[kubeconfigContext] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[kubeconfigContext] = &clientcmdapi.Context{Cluster: kubeconfigContext, AuthInfo: user}
	cfg.CurrentContext = kubeconfigContext
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return writeFileAtomic(path, b, 0o600)
}

// kubeconfigPath is where the kubeconfig of a user lives in the cluster
// directory. "admin" is the one Kubeconfig returns.
func (c *Cluster) kubeconfigPath(user string) string {
	return filepath.Join(c.dir, "kubeconfig", user+".kubeconfig")
}

// Kubeconfig returns the path of the cluster-admin kubeconfig.
func (c *Cluster) Kubeconfig() string { return c.kubeconfigPath("admin") }

// Kubectl returns the path of the kubectl built for the cluster.
func (c *Cluster) Kubectl() string { return c.st.Binaries.Kubectl }

// RESTConfig returns a client configuration for the cluster admin, with QPS
// raised for tests that create many objects.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", c.Kubeconfig(), err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}

// Client returns a clientset for the cluster admin.
func (c *Cluster) Client() (kubernetes.Interface, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}
