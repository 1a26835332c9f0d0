package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"sigs.k8s.io/yaml"
)

func hostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// apiServerURL is the address every component, and pods through the
// kubernetes Service, reach the API server at.
func (c *Cluster) apiServerURL() string {
	return "https://" + hostPort(apiAddress, c.st.Ports.APIServer)
}

func (c *Cluster) pki() *pki { return &pki{dir: filepath.Join(c.dir, "pki")} }

func (c *Cluster) startEtcd(ctx context.Context) error {
	client := "http://" + hostPort("127.0.0.1", c.st.Ports.EtcdClient)
	peer := "http://" + hostPort("127.0.0.1", c.st.Ports.EtcdPeer)
	_, err := c.start(ctx, procSpec{name: "etcd", argv: []string{
		c.st.Binaries.Etcd,
		"--name=stickyvol",
		"--data-dir=" + filepath.Join(c.dir, "etcd"),
		"--listen-client-urls=" + client, "--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=stickyvol=" + peer,
		"--listen-metrics-urls=",
		// A throw-away cluster: speed over durability.
		"--unsafe-no-fsync=true",
		"--quota-backend-bytes=2147483648",
	}})
	return err
}

// startAPIServer starts kube-apiserver on the cluster's own address. It must
// not listen on loopback only: the default endpoint reconciler publishes the
// advertise address as the kubernetes Service's endpoint, which kube-proxy
// then DNATs pods' in-cluster traffic to (it refuses a loopback address).
func (c *Cluster) startAPIServer(ctx context.Context) error {
	p := c.pki()
	_, err := c.start(ctx, procSpec{name: "kube-apiserver", argv: []string{
		c.st.Binaries.KubeAPIServer,
		"--etcd-servers=http://" + hostPort("127.0.0.1", c.st.Ports.EtcdClient),
		"--bind-address=" + apiAddress,
		"--advertise-address=" + apiAddress,
		"--secure-port=" + strconv.Itoa(c.st.Ports.APIServer),
		"--tls-cert-file=" + p.certFile("apiserver"),
		"--tls-private-key-file=" + p.keyFile("apiserver"),
		"--client-ca-file=" + p.caFile(),
		"--kubelet-client-certificate=" + p.certFile("apiserver-kubelet-client"),
		"--kubelet-client-key=" + p.keyFile("apiserver-kubelet-client"),
		"--kubelet-certificate-authority=" + p.caFile(),
		// Else logs and exec resolve node names through the host's resolver.
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc." + clusterDomain,
		"--service-account-key-file=" + filepath.Join(p.dir, "sa.pub"),
		"--service-account-signing-key-file=" + p.keyFile("sa"),
		"--service-cluster-ip-range=" + serviceRange,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--cert-dir=" + filepath.Join(p.dir, "apiserver-generated"),
		"--profiling=false",
	}})
	return err
}

// The client rate limits of kube-controller-manager, raised from 20/30: at
// the default, the PV controller binds only a few claims per second, which
// would make benchmarks measure the controller-manager's rate limiter rather
// than the provisioner. Each controller has a client of its own
// (--use-service-account-credentials), so each gets these limits.
const (
	ControllerManagerQPS   = 100
	ControllerManagerBurst = 200
)

// startControllerManager starts kube-controller-manager with the client
// rate limits above.
func (c *Cluster) startControllerManager(ctx context.Context) error {
	p := c.pki()
	kc := c.kubeconfigPath("controller-manager")
	_, err := c.start(ctx, procSpec{name: "kube-controller-manager", argv: []string{
		c.st.Binaries.KubeControllerManager,
		"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.st.Ports.ControllerMgr),
		"--cert-dir=" + filepath.Join(p.dir, "controller-manager-generated"),
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.keyFile("sa"),
		"--root-ca-file=" + p.caFile(),
		"--cluster-signing-cert-file=" + p.caFile(),
		"--cluster-signing-key-file=" + p.keyFile("ca"),
		"--kube-api-qps=" + strconv.Itoa(ControllerManagerQPS),
		"--kube-api-burst=" + strconv.Itoa(ControllerManagerBurst),
		"--profiling=false",
	}})
	return err
}

func (c *Cluster) startScheduler(ctx context.Context) error {
	kc := c.kubeconfigPath("scheduler")
	_, err := c.start(ctx, procSpec{name: "kube-scheduler", argv: []string{
		c.st.Binaries.KubeScheduler,
		"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.st.Ports.Scheduler),
		"--cert-dir=" + filepath.Join(c.pki().dir, "scheduler-generated"),
		"--leader-elect=false",
		"--profiling=false",
	}})
	return err
}

// hasKubeProxy says whether the cluster runs kube-proxy: only with real
// nodes. kwok's pods run nothing and so take no Service traffic, and
// kube-proxy would wait half a minute at start for a Node of its own.
// CoreDNS, a host process that reads the API, needs no node either.
func (c *Cluster) hasKubeProxy() bool { return len(c.st.Nodes) > 0 }

// startKubeProxy starts the cluster's one kube-proxy, a host process that
// serves Services for every node: all node bridges route through the host.
// Zero conntrack settings make it leave the host's conntrack sysctls alone;
// localhostNodePorts off keeps route_localnet as it is.
func (c *Cluster) startKubeProxy(ctx context.Context) error {
	cfg := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"clientConnection":   map[string]any{"kubeconfig": c.kubeconfigPath("kube-proxy")},
		"hostnameOverride":   c.st.Nodes[0].Name,
		"mode":               "iptables",
		"clusterCIDR":        podNetwork,
		"bindAddress":        "127.0.0.1",
		"healthzBindAddress": hostPort("127.0.0.1", c.st.Ports.ProxyHealthz),
		"metricsBindAddress": hostPort("127.0.0.1", c.st.Ports.ProxyMetrics),
		"conntrack": map[string]any{
			"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
		},
		"iptables":          map[string]any{"localhostNodePorts": false, "masqueradeAll": false},
		"nodePortAddresses": []string{podNetwork},
	}
	path := filepath.Join(c.dir, "config", "kube-proxy.yaml")
	if err := writeYAML(path, cfg); err != nil {
		return err
	}
	_, err := c.start(ctx, procSpec{name: "kube-proxy", argv: []string{c.st.Binaries.KubeProxy, "--config=" + path, "--v=2"}})
	return err
}

// corefile serves cluster.local and the reverse zones from the API, on the
// cluster DNS address only. There is no upstream to forward to; the
// catch-all block answers NXDOMAIN, without which other names get REFUSED
// and Go's resolver reports "server misbehaving" instead of "no such host".
const corefile = `cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind %[1]s
    errors
    log
    ready %[2]s
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %[3]s %[4]s
        pods insecure
        ttl 5
    }
    cache 5
}
.:53 {
    bind %[1]s
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
`

func (c *Cluster) startCoreDNS(ctx context.Context) error {
	path := filepath.Join(c.dir, "config", "Corefile")
	conf := fmt.Sprintf(corefile, dnsAddress, hostPort("127.0.0.1", c.st.Ports.DNSReady), c.Kubeconfig(), kubeconfigContext)
	if err := writeFileAtomic(path, []byte(conf), 0o644); err != nil {
		return err
	}
	_, err := c.start(ctx, procSpec{name: "coredns", argv: []string{c.st.Binaries.CoreDNS, "-conf", path}})
	return err
}

// startKwok starts kwok for the fake nodes, with the Stage configurations
// (node heartbeat with leases, pod ready/complete/delete) built with it.
func (c *Cluster) startKwok(ctx context.Context) error {
	stages, err := filepath.Glob(filepath.Join(c.st.Binaries.KwokStageDir, "*.yaml"))
	if err != nil || len(stages) == 0 {
		return fmt.Errorf("no kwok Stage configurations in %q", c.st.Binaries.KwokStageDir)
	}
	argv := []string{
		c.st.Binaries.Kwok,
		"--kubeconfig=" + c.Kubeconfig(),
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotation + "=fake",
		"--cidr=" + fakePodRange,
		"--node-ip=" + fakeNodeIP,
		"--server-address=" + hostPort("127.0.0.1", c.st.Ports.KwokServer),
	}
	for _, s := range stages {
		argv = append(argv, "--config="+s)
	}
	_, err = c.start(ctx, procSpec{name: "kwok", argv: argv})
	return err
}

func writeYAML(path string, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(path, b, 0o644)
}

// stopGrace is how long a component gets to exit on SIGTERM before SIGKILL.
// kube-apiserver and etcd take up to ~10 s to exit gracefully; a cluster
// being torn down has no use for their graceful shutdown.
const stopGrace = 3 * time.Second
