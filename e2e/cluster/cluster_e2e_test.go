//go:build e2e

package cluster_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/ptr"

	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/internal/testutil"
)

const (
	ns       = "harness"
	probeRef = "stickyvol.local/cluster-probe:1"
)

// TestLocalCluster brings a cluster up, checks what a user of it relies on,
// tears it down and checks that the host is as it was.
func TestLocalCluster(t *testing.T) {
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	ctx = klog.NewContext(ctx, ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2))))

	cacheDir := cluster.DefaultCacheDir()
	bins, images, err := cluster.Prepare(ctx, cacheDir, t.Output())
	if err != nil {
		t.Fatal(err)
	}
	probe := buildProbeImage(t)
	// A clean host first, so that the snapshot shows what the host looks
	// like without any cluster.
	if err := cluster.DownDir(ctx, cluster.ClusterDir(cacheDir), t.Output()); err != nil {
		t.Fatalf("clearing an earlier cluster: %v", err)
	}
	before := snapshotHost(t, cluster.ClusterDir(cacheDir))

	start := time.Now()
	c, err := cluster.Up(ctx, cluster.Config{CacheDir: cacheDir, Binaries: bins, Images: images, Out: t.Output()})
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	t.Logf("up (binaries and images built): %s", time.Since(start).Round(100*time.Millisecond))
	down := func() {
		start := time.Now()
		if err := c.Down(context.WithoutCancel(ctx)); err != nil {
			t.Errorf("down: %v", err)
		}
		t.Logf("down: %s", time.Since(start).Round(100*time.Millisecond))
	}
	downDone := false
	defer func() {
		if !downDone {
			c.PrintLogTails(t.Output(), 30)
			down()
		}
	}()

	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.LoadImage(ctx, probe); err != nil {
		t.Fatal(err)
	}
	createNamespace(ctx, t, cs)
	h := &harness{c: c, cs: cs}

	t.Run("nodes are Ready with their bridge address", h.testNodesReady)
	t.Run("hostPath under /var/lib/stickyvol lands in the node's own directory", h.testHostPath)
	t.Run("in-cluster config lists nodes through the kubernetes Service", h.testInClusterConfig)
	t.Run("StatefulSet pod names resolve across nodes", h.testStatefulSetDNS)
	t.Run("ClusterIP Service answers through kube-proxy", h.testClusterIP)
	t.Run("PID 1 seen from a node is the node's, in its mount namespace", h.testNodePID1)
	t.Run("kubelet restarts in its node's namespace", h.testRestartKubelet)
	t.Run("a node restarts like a reboot", h.testRestartNode)

	if t.Failed() {
		c.PrintLogTails(t.Output(), 30)
	}
	downDone = true
	down()
	// A second down finds nothing to do and must not fail.
	if err := c.Down(ctx); err != nil {
		t.Errorf("second down: %v", err)
	}
	after := snapshotHost(t, cluster.ClusterDir(cacheDir))
	for _, d := range before.diff(after) {
		t.Errorf("left behind after down: %s", d)
	}
}

type harness struct {
	c  *cluster.Cluster
	cs kubernetes.Interface
}

func (h *harness) testNodesReady(t *testing.T) {
	for _, n := range h.c.Nodes() {
		node, err := h.cs.CoreV1().Nodes().Get(t.Context(), n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !nodeReady(node) {
			t.Errorf("node %s is not Ready: %v", n.Name, node.Status.Conditions)
		}
		var internal string
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = a.Address
			}
		}
		if internal != n.IP {
			t.Errorf("node %s InternalIP = %q, want %s", n.Name, internal, n.IP)
		}
	}
	if got := len(h.c.Nodes()); got != 2 {
		t.Errorf("%d nodes, want the default 2", got)
	}
}

// testHostPath runs a pod on each node that writes the node's name to the
// same hostPath. Each node's directory must hold its own name: shared
// directories would hold one name twice.
func (h *harness) testHostPath(t *testing.T) {
	ctx := t.Context()
	for _, n := range h.c.Nodes() {
		p := busyboxPod("owner-"+n.Name, n.Name, `echo "$NODE" > /data/owner`)
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "NODE", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
		p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
			Path: "/var/lib/stickyvol/harness", Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}}}
		runToCompletion(ctx, t, h.cs, p)
	}
	for _, n := range h.c.Nodes() {
		b, err := os.ReadFile(filepath.Join(n.DataDir, "harness", "owner"))
		if err != nil {
			t.Errorf("node %s: %v", n.Name, err)
		} else if got := strings.TrimSpace(string(b)); got != n.Name {
			t.Errorf("%s/harness/owner = %q, want %q", n.DataDir, got, n.Name)
		}
		out, err := h.c.Exec(ctx, n.Name, "cat", "/var/lib/stickyvol/harness/owner")
		if err != nil || strings.TrimSpace(string(out)) != n.Name {
			t.Errorf("node %s sees /var/lib/stickyvol/harness/owner = %q (%v), want %q", n.Name, out, err, n.Name)
		}
	}
	if _, err := os.Stat("/var/lib/stickyvol/harness"); err == nil {
		t.Error("the host's own /var/lib/stickyvol/harness exists: a node wrote through to the host")
	}
}

func (h *harness) testInClusterConfig(t *testing.T) {
	ctx := t.Context()
	_, err := h.cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "harness-node-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"list"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "harness-node-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "harness-node-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: "default"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range h.c.Nodes() {
		logs := runToCompletion(ctx, t, h.cs, probePod("nodes-from-"+n.Name, n.Name, "nodes"))
		for _, want := range []string{"host: https://10.96.0.1:443", "node: node-1", "node: node-2"} {
			if !strings.Contains(logs, want) {
				t.Errorf("pod on %s: output lacks %q:\n%s", n.Name, want, logs)
			}
		}
	}
}

func (h *harness) testStatefulSetDNS(t *testing.T) {
	ctx := t.Context()
	labels := map[string]string{"app": "web"}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: labels,
			Ports: []corev1.ServicePort{{Name: "web", Port: 80}}},
	}
	if _, err := h.cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tmpl := busyboxPod("", "", "exec sleep 3600")
	tmpl.Labels = labels
	tmpl.Spec.RestartPolicy = corev1.RestartPolicyAlways
	tmpl.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
			LabelSelector: &metav1.LabelSelector{MatchLabels: labels}, TopologyKey: corev1.LabelHostname}},
	}}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Replicas: ptr.To(int32(2)), ServiceName: "web", PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec},
		},
	}
	if _, err := h.cs.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web0 := waitPod(ctx, t, h.cs, "web-0", podReady)
	web1 := waitPod(ctx, t, h.cs, "web-1", podReady)
	if web0.Spec.NodeName == web1.Spec.NodeName {
		t.Fatalf("web-0 and web-1 both on %s; anti-affinity should spread them", web0.Spec.NodeName)
	}
	name := "web-0.web." + ns + ".svc.cluster.local"
	var got, out string
	// CoreDNS caches answers, NXDOMAIN too, for 5 s.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		out = h.kubectl(t, "exec", "-n", ns, "web-1", "--", "nslookup", name)
		if got = answerAddress(out); got == web0.Status.PodIP {
			break
		}
	}
	if got != web0.Status.PodIP {
		t.Errorf("from web-1 on %s, %s resolves to %q, want web-0's IP %s on %s:\n%s",
			web1.Spec.NodeName, name, got, web0.Status.PodIP, web0.Spec.NodeName, out)
	}
}

// answerAddress returns the address busybox nslookup printed for the name
// asked, skipping the server's.
func answerAddress(out string) string {
	_, answer, ok := strings.Cut(out, "Name:")
	if !ok {
		return ""
	}
	for _, line := range strings.Split(answer, "\n") {
		if ip, ok := strings.CutPrefix(strings.TrimSpace(line), "Address:"); ok {
			return strings.TrimSpace(ip)
		}
	}
	return ""
}

// testClusterIP serves a page from a pod on the first node and fetches it
// through its ClusterIP from a pod on the last one.
func (h *harness) testClusterIP(t *testing.T) {
	ctx := t.Context()
	nodes := h.c.Nodes()
	server := busyboxPod("echo", nodes[0].Name, `mkdir /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www`)
	server.Labels = map[string]string{"app": "echo"}
	server.Spec.RestartPolicy = corev1.RestartPolicyAlways
	server.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
		TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
	if _, err := h.cs.CoreV1().Pods(ns).Create(ctx, server, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := h.cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: server.Labels,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitPod(ctx, t, h.cs, "echo", podReady)
	url := "http://" + svc.Spec.ClusterIP + "/"
	logs := runToCompletion(ctx, t, h.cs, probePod("fetch", nodes[len(nodes)-1].Name, "get", url))
	if want := "hello from echo"; !strings.Contains(logs, want) {
		t.Errorf("GET %s from %s: %q, want %q", url, nodes[len(nodes)-1].Name, logs, want)
	}
}

// testNodePID1 does what upstream's storage e2e helper pods do to look at a
// node's mounts: a privileged pod with the node's / at /rootfs enters the
// mount namespace of /rootfs/proc/1. It must be the node's own, where
// kubelet keeps this very pod's directory; the host's PID 1 would show the
// host's /var/lib/kubelet, or not let the pod in at all.
func (h *harness) testNodePID1(t *testing.T) {
	ctx := t.Context()
	for _, n := range h.c.Nodes() {
		p := busyboxPod("pid1-"+n.Name, n.Name, `nsenter --mount=/rootfs/proc/1/ns/mnt -- test -d "/var/lib/kubelet/pods/$POD_UID" && echo "found pods/$POD_UID" ||
			{ echo "not found; PID 1 is $(tr '\0' ' ' </rootfs/proc/1/cmdline)"; exit 1; }`)
		c := &p.Spec.Containers[0]
		c.Env = []corev1.EnvVar{{Name: "POD_UID", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}}}
		c.SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
		c.VolumeMounts = []corev1.VolumeMount{{Name: "rootfs", MountPath: "/rootfs"}}
		p.Spec.Volumes = []corev1.Volume{{Name: "rootfs", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}
		logs := runToCompletion(ctx, t, h.cs, p)
		if !strings.Contains(logs, "found pods/") {
			t.Errorf("pod on %s: %q, want it to find its own pod directory", n.Name, logs)
		}
	}
}

// testRestartKubelet restarts a kubelet and checks that its running pod
// survives and the node comes back Ready.
func (h *harness) testRestartKubelet(t *testing.T) {
	ctx := t.Context()
	before := waitPod(ctx, t, h.cs, "echo", podReady)
	node := before.Spec.NodeName
	pid := h.pid(node + "/kubelet")
	if err := h.c.RestartKubelet(ctx, node); err != nil {
		t.Fatal(err)
	}
	if got := h.pid(node + "/kubelet"); got == pid || got == 0 {
		t.Errorf("kubelet of %s has pid %d after the restart, before %d", node, got, pid)
	}
	after := waitPod(ctx, t, h.cs, "echo", podReady)
	if got, want := after.Status.ContainerStatuses[0].RestartCount, before.Status.ContainerStatuses[0].RestartCount; got != want {
		t.Errorf("echo restarted %d times across the kubelet restart, want 0", got-want)
	}
	waitNodeReady(ctx, t, h.cs, node)
}

// testRestartNode restarts the node running echo, as a reboot would: its
// containers start again, its data is still there, and the Service answers
// again.
func (h *harness) testRestartNode(t *testing.T) {
	ctx := t.Context()
	node := waitPod(ctx, t, h.cs, "echo", podReady).Spec.NodeName
	restarted := metav1.Now()
	if err := h.c.RestartNode(ctx, node); err != nil {
		t.Fatal(err)
	}
	waitPod(ctx, t, h.cs, "echo", func(p *corev1.Pod) bool {
		st := p.Status.ContainerStatuses
		return podReady(p) && len(st) == 1 && st[0].State.Running != nil && !st[0].State.Running.StartedAt.Before(&restarted)
	})
	waitNodeReady(ctx, t, h.cs, node)
	out, err := h.c.Exec(ctx, node, "cat", "/var/lib/stickyvol/harness/owner")
	if err != nil || strings.TrimSpace(string(out)) != node {
		t.Errorf("after the restart, %s sees /var/lib/stickyvol/harness/owner = %q (%v), want %q", node, out, err, node)
	}
	svc, err := h.cs.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodes := h.c.Nodes()
	logs := runToCompletion(ctx, t, h.cs, probePod("fetch-after-restart", nodes[len(nodes)-1].Name, "get", "http://"+svc.Spec.ClusterIP+"/"))
	if want := "hello from echo"; !strings.Contains(logs, want) {
		t.Errorf("GET echo after restarting %s: %q, want %q", node, logs, want)
	}
}

// pid returns the PID of a cluster component, 0 if it is not running.
func (h *harness) pid(component string) int {
	for _, s := range h.c.Status() {
		if s.Name == component && s.Running {
			return s.PID
		}
	}
	return 0
}

func (h *harness) kubectl(t *testing.T, args ...string) string {
	cmd := exec.CommandContext(t.Context(), h.c.Kubectl(), append([]string{"--kubeconfig", h.c.Kubeconfig()}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

func createNamespace(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Pods need the namespace's default ServiceAccount, which
	// kube-controller-manager makes.
	err = pollUntil(ctx, 30*time.Second, func() (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
	if err != nil {
		t.Fatalf("default ServiceAccount in %s: %v", ns, err)
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func pollUntil(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
