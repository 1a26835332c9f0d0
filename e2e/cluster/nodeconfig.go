package cluster

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"text/template"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// nodeBinds are the paths a node sees bound from its own directory, the
// source relative to the node directory. kubelet writes to
// /var/lib/kubelet/device-plugins, /var/log/pods and /var/log/containers
// whatever its configuration says, the CNI plugins keep their IPAM state and
// results cache under /var/lib/cni, and containerd 1.6 puts its shim sockets
// in /run/containerd/s: binding these per node keeps every node's files to
// itself and the host's paths untouched.
var nodeBinds = []struct{ src, dst string }{
	{"kubelet", "/var/lib/kubelet"},
	{"stickyvol", "/var/lib/stickyvol"},
	{"log", "/var/log"},
	{"cni", "/var/lib/cni"},
	{"run-containerd", "/run/containerd"},
}

// nodeDir is the host directory that holds everything of a node.
func (c *Cluster) nodeDir(name string) string { return filepath.Join(c.dir, "nodes", name) }

func (c *Cluster) containerdSocket(name string) string {
	return filepath.Join(c.nodeDir(name), "run", "containerd.sock")
}

// containerdConfig is containerd 1.6's configuration for one node.
//
// restrict_oom_score_adj: this machine's bounding set lacks
// CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj and fails with
// "can't get final child's PID from pipe: EOF" (the cause shows only in runc's
// debug log) unless the CRI keeps the adjustment at or above containerd's own.
// netns_mounts_under_state_dir keeps pod network namespaces out of /run/netns.
var containerdConfig = template.Must(template.New("containerd").Parse(`version = 2
root = "{{.Dir}}/containerd/root"
state = "{{.Dir}}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{{.Socket}}"

[ttrpc]
  address = "{{.Socket}}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Dir}}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{{.Runc}}"
        SystemdCgroup = false
        Root = "{{.Dir}}/run/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{.CNIBinDir}}"
    conf_dir = "{{.Dir}}/cni-conf"
`))

// cniConfig is the node's pod network: a bridge of its own and a /24 of
// 10.88.0.0/16. The bridge exists before containerd starts, holding the
// node's IP as gateway, so kubelet can serve on it at once.
func cniConfig(n node) ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       namePrefix + n.Name,
		"plugins": []map[string]any{
			{
				"type":        "bridge",
				"bridge":      n.Bridge,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": podSubnet(n.Index), "gateway": n.IP}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			{"type": "loopback"},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// kubeletConfig is the node's kubelet configuration. Paths under
// /var/lib/kubelet and /var/log are the node's own (see nodeBinds).
func (c *Cluster) kubeletConfig(n node) ([]byte, error) {
	nd := c.nodeDir(n.Name)
	p := c.pki()
	cfg := kubeletv1beta1.KubeletConfiguration{
		TypeMeta:                 metav1.TypeMeta{APIVersion: "kubelet.config.k8s.io/v1beta1", Kind: "KubeletConfiguration"},
		ContainerRuntimeEndpoint: "unix://" + c.containerdSocket(n.Name),
		ImageServiceEndpoint:     "unix://" + c.containerdSocket(n.Name),
		StaticPodPath:            filepath.Join(nd, "manifests"),
		// kubelet 1.35+ refuses cgroup v1 unless told otherwise.
		FailCgroupV1: ptr.To(false),
		FailSwapOn:   ptr.To(false),
		CgroupDriver: "cgroupfs",
		CgroupRoot:   "/" + n.CgroupRoot,
		Address:      n.IP,
		Port:         int32(n.KubeletPort),
		// HealthzBindAddress serves plain HTTP; Up polls it.
		HealthzBindAddress: n.IP,
		HealthzPort:        ptr.To(int32(n.HealthzPort)),
		TLSCertFile:        p.certFile("kubelet-" + n.Name + "-serving"),
		TLSPrivateKeyFile:  p.keyFile("kubelet-" + n.Name + "-serving"),
		// Only clients with a certificate from the cluster CA (the API
		// server) may call the kubelet API; they may do anything.
		Authentication: kubeletv1beta1.KubeletAuthentication{
			X509:      kubeletv1beta1.KubeletX509Authentication{ClientCAFile: p.caFile()},
			Anonymous: kubeletv1beta1.KubeletAnonymousAuthentication{Enabled: ptr.To(false)},
			Webhook:   kubeletv1beta1.KubeletWebhookAuthentication{Enabled: ptr.To(false)},
		},
		Authorization: kubeletv1beta1.KubeletAuthorization{Mode: kubeletv1beta1.KubeletAuthorizationModeAlwaysAllow},
		ClusterDNS:    []string{dnsAddress},
		ClusterDomain: clusterDomain,
		// The machine is shared: low thresholds keep other users' disk use
		// from evicting test pods, and images imported with no registry to
		// pull them from again are never garbage collected.
		EvictionHard: map[string]string{
			"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%",
		},
		ImageGCHighThresholdPercent: ptr.To(int32(100)),
		ImageGCLowThresholdPercent:  ptr.To(int32(99)),
		SerializeImagePulls:         ptr.To(false),
		// The default, /usr/libexec/kubernetes/kubelet-plugins/volume/exec,
		// is outside the node's own directories.
		VolumePluginDir: "/var/lib/kubelet/volumeplugins",
		// kube-proxy owns the host's iptables; kubelet would add KUBE-FIREWALL
		// and canary chains that nothing removes.
		MakeIPTablesUtilChains: ptr.To(false),
		// kubelet lowers its own oom_score_adj to -999 by default, once it
		// finds itself in its node's PID namespace (it reads /proc/1/ns/pid),
		// and every minute after. Lowering it takes CAP_SYS_RESOURCE, which
		// this machine's bounding set lacks (see containerdConfig): kubelet
		// keeps the 0 it inherits instead of logging the refusal.
		OOMScoreAdj: ptr.To(int32(0)),
	}
	return yaml.Marshal(cfg)
}

// writeNodeConfig writes a node's directories and configuration files.
func (c *Cluster) writeNodeConfig(n node) error {
	nd := c.nodeDir(n.Name)
	for _, d := range []string{"containerd/root", "containerd/state", "containerd/opt", "run", "cni-conf", "manifests"} {
		if err := os.MkdirAll(filepath.Join(nd, d), 0o755); err != nil {
			return err
		}
	}
	for _, b := range nodeBinds {
		if err := os.MkdirAll(filepath.Join(nd, b.src), 0o755); err != nil {
			return err
		}
	}
	var toml bytes.Buffer
	err := containerdConfig.Execute(&toml, map[string]string{
		"Dir": nd, "Socket": c.containerdSocket(n.Name), "Runc": c.tools.runc, "CNIBinDir": c.tools.cniBinDir,
	})
	if err != nil {
		return err
	}
	cni, err := cniConfig(n)
	if err != nil {
		return err
	}
	kubelet, err := c.kubeletConfig(n)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"containerd.toml":             toml.Bytes(),
		"cni-conf/10-bridge.conflist": cni,
		"kubelet.yaml":                kubelet,
	}
	for name, data := range files {
		if err := writeFileAtomic(filepath.Join(nd, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
