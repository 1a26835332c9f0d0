// Package deploy_test renders the kustomizations under deploy/ and the example
// manifests, decodes every object strictly into client-go's types, and checks
// what a cluster would notice: names that must match the driver, the volume
// binding mode, the mounts, the RBAC rules.
package deploy_test

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/stickyvol/stickyvol/driver"
	"github.com/stickyvol/stickyvol/internal/agentapi"
)

const (
	driverName   = driver.Name
	className    = "stickyvol"
	namespace    = "stickyvol"
	agentName    = "stickyvol-node"
	ctrlName     = "stickyvol-controller"
	agentImage   = "stickyvol.local/stickyvol:dev"
	kubeletRoot  = "/var/lib/kubelet"
	dataRoot     = "/var/lib/stickyvol"
	defaultClass = "storageclass.kubernetes.io/is-default-class"
)

// overlays are what users apply; base is what they share.
var overlays = []string{"overlays/kind", "overlays/local"}

// nodeFlags are the flags of `stickyvol node` (cmd/stickyvol/node.go) and
// the logging flag -v.
var nodeFlags = []string{
	"node-name", "kubelet-root", "data-root", "capacity", "max-volumes", "socket-group",
	"kubeconfig", "kube-api-qps", "kube-api-burst", "threadiness", "operation-timeout",
	"metrics-address", "register-with-kubelet", "reconcile-period", "delete-orphans-after", "backend", "expand-volumes",
	"publish-capacity", "namespace", "capacity-owner", "v",
}

// TestEveryKustomizationRendersTheSameObjects checks that the overlays
// change objects of the base and add none, but for the local cluster's
// VolumeSnapshotClass (deploy/snapshots): the local cluster has the snapshot
// CRDs, kind does not.
func TestEveryKustomizationRendersTheSameObjects(t *testing.T) {
	want := []string{
		"ClusterRole/stickyvol-controller",
		"ClusterRole/stickyvol-node",
		"ClusterRoleBinding/stickyvol-controller",
		"ClusterRoleBinding/stickyvol-node",
		"CSIDriver/" + driverName,
		"DaemonSet/stickyvol/stickyvol-node",
		"Deployment/stickyvol/stickyvol-controller",
		"Namespace/stickyvol",
		"Role/stickyvol/stickyvol-controller",
		"Role/stickyvol/stickyvol-node",
		"RoleBinding/stickyvol/stickyvol-controller",
		"RoleBinding/stickyvol/stickyvol-node",
		"ServiceAccount/stickyvol/stickyvol-controller",
		"ServiceAccount/stickyvol/stickyvol-node",
		"StorageClass/stickyvol",
		"ValidatingAdmissionPolicy/stickyvol-node-capacities",
		"ValidatingAdmissionPolicy/stickyvol-node-claims",
		"ValidatingAdmissionPolicy/stickyvol-node-snapshotcontents",
		"ValidatingAdmissionPolicy/stickyvol-node-volumes",
		"ValidatingAdmissionPolicyBinding/stickyvol-node-capacities",
		"ValidatingAdmissionPolicyBinding/stickyvol-node-claims",
		"ValidatingAdmissionPolicyBinding/stickyvol-node-snapshotcontents",
		"ValidatingAdmissionPolicyBinding/stickyvol-node-volumes",
	}
	for _, dir := range append([]string{"base"}, overlays...) {
		want := want
		if dir == "overlays/local" {
			want = append(slices.Clone(want), "VolumeSnapshotClass/"+className)
		}
		slices.Sort(want)
		var got []string
		for _, o := range render(t, dir) {
			id := o.GetObjectKind().GroupVersionKind().Kind + "/" + o.GetName()
			if ns := o.GetNamespace(); ns != "" {
				id = o.GetObjectKind().GroupVersionKind().Kind + "/" + ns + "/" + o.GetName()
			}
			got = append(got, id)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s renders\n  %v\nwant\n  %v", dir, got, want)
		}
	}
}

func TestStorageClass(t *testing.T) {
	for _, dir := range overlays {
		t.Run(dir, func(t *testing.T) {
			sc := get[*storagev1.StorageClass](t, render(t, dir), className)
			if sc.Provisioner != driverName {
				t.Errorf("provisioner %q, want the driver name %q", sc.Provisioner, driverName)
			}
			// Immediate would place the volume before the pod has a node.
			if sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
				t.Errorf("volumeBindingMode %v, want WaitForFirstConsumer", show(sc.VolumeBindingMode))
			}
			if sc.ReclaimPolicy == nil || *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
				t.Errorf("reclaimPolicy %v, want Delete", show(sc.ReclaimPolicy))
			}
			// The agents grow their volumes: claims may ask for more.
			if sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
				t.Errorf("allowVolumeExpansion %v, want true", show(sc.AllowVolumeExpansion))
			}
			// The local overlay is the kind overlay plus an affinity: the
			// local cluster runs what a kind user applies.
			wantDefault := dir == "overlays/kind" || dir == "overlays/local"
			if isDefault := sc.Annotations[defaultClass] == "true"; isDefault != wantDefault {
				t.Errorf("%s annotation %q, want default=%v", defaultClass, sc.Annotations[defaultClass], wantDefault)
			}
		})
	}
}

func TestCSIDriver(t *testing.T) {
	d := get[*storagev1.CSIDriver](t, render(t, "base"), driverName)
	s := d.Spec
	if s.AttachRequired == nil || *s.AttachRequired {
		t.Error("attachRequired must be false: a node-local directory has nothing to attach")
	}
	if s.PodInfoOnMount == nil || !*s.PodInfoOnMount {
		t.Error("podInfoOnMount must be true: only the pod information says a volume is inline")
	}
	if s.FSGroupPolicy == nil || *s.FSGroupPolicy != storagev1.FileFSGroupPolicy {
		t.Errorf("fsGroupPolicy %v, want File (non-root pods need fsGroup applied)", show(s.FSGroupPolicy))
	}
	if !slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent, storagev1.VolumeLifecycleEphemeral}) {
		t.Errorf("volumeLifecycleModes %v, want [Persistent Ephemeral]: claims and inline volumes", s.VolumeLifecycleModes)
	}
	// The agents publish CSIStorageCapacity (--publish-capacity defaults to
	// true); the scheduler reads it only when the CSIDriver says so.
	if s.StorageCapacity == nil || !*s.StorageCapacity {
		t.Error("storageCapacity must be true: the agents publish CSIStorageCapacity and the scheduler should use it")
	}
}

func TestDaemonSetImage(t *testing.T) {
	for _, dir := range overlays {
		ds := get[*appsv1.DaemonSet](t, render(t, dir), agentName)
		c := ds.Spec.Template.Spec.Containers[0]
		// The image is loaded into the nodes, never pulled: a pull of
		// stickyvol.local/... fails, and :latest would default to Always.
		if c.Image != agentImage || c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("%s: image %s pull %s, want %s pull IfNotPresent", dir, c.Image, c.ImagePullPolicy, agentImage)
		}
	}
}

// nodeArgs checks the agent's command line and returns its flags by name.
// controllerFlags are the flags of `stickyvol controller`
// (cmd/stickyvol/controller.go) and -v.
var controllerFlags = []string{"identity", "namespace", "kubeconfig", "kube-api-qps", "kube-api-burst", "metrics-address", "v"}

func nodeArgs(t *testing.T, c corev1.Container) map[string]string {
	t.Helper()
	return commandArgs(t, c, "node", nodeFlags)
}

// commandArgs checks that c runs the image's `stickyvol <command>` with
// flags it has, and returns them.
func commandArgs(t *testing.T, c corev1.Container, command string, known []string) map[string]string {
	t.Helper()
	if len(c.Command) != 0 || len(c.Args) == 0 || c.Args[0] != command {
		t.Fatalf("want the image's entrypoint with args [%s ...], got command %q args %q", command, c.Command, c.Args)
	}
	flags := map[string]string{}
	for _, arg := range c.Args[1:] {
		name, value, ok := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if !strings.HasPrefix(arg, "-") || !ok {
			t.Errorf("arg %q: want --name=value", arg)
			continue
		}
		if !slices.Contains(known, name) {
			t.Errorf("arg %q: `stickyvol %s` has no flag %q", arg, command, name)
		}
		flags[name] = value
	}
	return flags
}

// The controller acts across nodes but touches no node: no host path, no
// privilege, not root; its identity in the Lease is its pod's name.
func TestControllerPod(t *testing.T) {
	objs := render(t, "overlays/local")
	d := get[*appsv1.Deployment](t, objs, ctrlName)
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("replicas %v: want a standby to take the Lease over", d.Spec.Replicas)
	}
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 || pod.HostNetwork || pod.HostPID {
		t.Fatalf("want one container in the pod's own namespaces, got %d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.Image != agentImage {
		t.Errorf("image %s, want the agent's %s", c.Image, agentImage)
	}
	flags := commandArgs(t, c, "controller", controllerFlags)
	if flags["identity"] != "$(POD_NAME)" || !envFromField(c, "POD_NAME", "metadata.name") {
		t.Errorf("--identity=%q: want $(POD_NAME) from metadata.name, unique among replicas", flags["identity"])
	}
	if flags["namespace"] != "$(POD_NAMESPACE)" || !envFromField(c, "POD_NAMESPACE", "metadata.namespace") {
		t.Errorf("--namespace=%q: want the pod's own namespace, where the Role grants the Lease", flags["namespace"])
	}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			t.Errorf("volume %s mounts the host's %s", v.Name, v.HostPath.Path)
		}
	}
	sc := c.SecurityContext
	if sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container securityContext %+v: want unprivileged, no escalation, all capabilities dropped", sc)
	}
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("the controller must not run as root")
	}
	if pod.ServiceAccountName != ctrlName {
		t.Errorf("service account %q, want its own %q, not the agents'", pod.ServiceAccountName, ctrlName)
	}
	checkProbes(t, c, flags)
}

func TestDaemonSetPod(t *testing.T) {
	objs := render(t, "overlays/local")
	ds := get[*appsv1.DaemonSet](t, objs, agentName)
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container (no sidecars), got %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	flags := nodeArgs(t, c)

	if flags["node-name"] != "$(NODE_NAME)" || !envFromField(c, "NODE_NAME", "spec.nodeName") {
		t.Errorf("--node-name=%q: want $(NODE_NAME) with NODE_NAME from spec.nodeName", flags["node-name"])
	}
	// Its CSIStorageCapacity objects go into its own namespace, where its
	// Role grants them and the controller reads them, owned by the owner of
	// its own pod.
	if flags["namespace"] != "$(POD_NAMESPACE)" || !envFromField(c, "POD_NAMESPACE", "metadata.namespace") {
		t.Errorf("--namespace=%q: want $(POD_NAMESPACE) from metadata.namespace", flags["namespace"])
	}
	if flags["capacity-owner"] != "$(POD_NAME)" || !envFromField(c, "POD_NAME", "metadata.name") {
		t.Errorf("--capacity-owner=%q: want $(POD_NAME) from metadata.name", flags["capacity-owner"])
	}
	if v, ok := flags["publish-capacity"]; ok && v != "true" {
		t.Errorf("--publish-capacity=%s, but the CSIDriver has storageCapacity: true", v)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("the agent must be privileged: it bind-mounts into pods and uses Bidirectional propagation")
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", pod.PriorityClassName)
	}
	if pod.HostNetwork {
		t.Error("hostNetwork: the nodes of the local cluster share one network namespace, so a host port clashes")
	}
	sa := get[*corev1.ServiceAccount](t, objs, pod.ServiceAccountName)
	if sa.Namespace != ds.Namespace {
		t.Errorf("ServiceAccount %s/%s is not in the DaemonSet's namespace %s", sa.Namespace, sa.Name, ds.Namespace)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("requests %v: want cpu and memory", c.Resources.Requests)
	}
}

func envFromField(c corev1.Container, name, fieldPath string) bool {
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil &&
			e.ValueFrom.FieldRef.FieldPath == fieldPath
	})
}

func TestDaemonSetMounts(t *testing.T) {
	ds := get[*appsv1.DaemonSet](t, render(t, "overlays/local"), agentName)
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	flags := nodeArgs(t, c)

	kubelet := hostMount(t, pod, c, flags["kubelet-root"])
	if kubelet.hostPath.Path != kubeletRoot || kubelet.mount.MountPath != kubeletRoot {
		t.Errorf("--kubelet-root=%s mounts host %s at %s, want %s at the same path (kubelet hands the agent host paths)",
			flags["kubelet-root"], kubelet.hostPath.Path, kubelet.mount.MountPath, kubeletRoot)
	}
	if p := kubelet.mount.MountPropagation; p == nil || *p != corev1.MountPropagationBidirectional {
		t.Errorf("kubelet root propagation %v, want Bidirectional: bind mounts into pods must reach the host", show(p))
	}
	if ty := kubelet.hostPath.Type; ty == nil || *ty != corev1.HostPathDirectory {
		t.Errorf("kubelet root hostPath type %v, want Directory (a wrong root must fail, not be created empty)", show(ty))
	}
	data := hostMount(t, pod, c, flags["data-root"])
	if data.hostPath.Path != dataRoot || data.mount.MountPath != dataRoot {
		t.Errorf("--data-root=%s mounts host %s at %s, want %s", flags["data-root"], data.hostPath.Path, data.mount.MountPath, dataRoot)
	}
	// A second mount below a Bidirectional one propagates to the host and is
	// left there at every container restart.
	for _, m := range c.VolumeMounts {
		if m.MountPath != kubeletRoot && strings.HasPrefix(m.MountPath+"/", kubeletRoot+"/") {
			t.Errorf("volume %q is mounted at %s, below the Bidirectional kubelet root", m.Name, m.MountPath)
		}
	}
}

type mounted struct {
	mount    corev1.VolumeMount
	hostPath *corev1.HostPathVolumeSource
}

// hostMount finds the container's mount at path and the hostPath volume behind it.
func hostMount(t *testing.T, pod corev1.PodSpec, c corev1.Container, path string) mounted {
	t.Helper()
	i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == path })
	if path == "" || i < 0 {
		t.Fatalf("no volume is mounted at %q (is the flag set?)", path)
	}
	m := c.VolumeMounts[i]
	j := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
	if j < 0 || pod.Volumes[j].HostPath == nil {
		t.Fatalf("volume %q mounted at %s is not a hostPath volume", m.Name, path)
	}
	return mounted{mount: m, hostPath: pod.Volumes[j].HostPath}
}

// TestDaemonSetProbes checks that both probes reach the paths the agent
// serves (cmd/stickyvol/serve.go) on the port of --metrics-address.
func TestDaemonSetProbes(t *testing.T) {
	ds := get[*appsv1.DaemonSet](t, render(t, "overlays/local"), agentName)
	c := ds.Spec.Template.Spec.Containers[0]
	checkProbes(t, c, nodeArgs(t, c))
}

// checkProbes checks that c's liveness and readiness probes reach /healthz
// and /readyz on the port of its --metrics-address.
func checkProbes(t *testing.T, c corev1.Container, flags map[string]string) {
	t.Helper()
	_, metricsPort, err := net.SplitHostPort(flags["metrics-address"])
	if err != nil {
		t.Fatalf("--metrics-address=%q: %v", flags["metrics-address"], err)
	}
	for _, probe := range []struct {
		name, path string
		p          *corev1.Probe
	}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
		p := probe.p
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != probe.path {
			t.Errorf("%s probe %v, want HTTP GET %s", probe.name, p, probe.path)
			continue
		}
		port := p.HTTPGet.Port.IntValue()
		if p.HTTPGet.Port.Type == intstr.String {
			i := slices.IndexFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.HTTPGet.Port.StrVal })
			if i < 0 {
				t.Fatalf("%s probe port %q names no container port", probe.name, p.HTTPGet.Port.StrVal)
			}
			port = int(c.Ports[i].ContainerPort)
		}
		if strconv.Itoa(port) != metricsPort {
			t.Errorf("%s probe reaches port %d, the agent serves %s on --metrics-address=%s", probe.name, port, probe.path, flags["metrics-address"])
		}
	}
}

// show prints what a pointer field holds, or <unset>.
func show[T any](p *T) any {
	if p == nil {
		return "<unset>"
	}
	return *p
}

// TestDaemonSetFoundByStatus checks that `stickyvol status` finds the agents'
// pods by the label it selects and reaches /volumes on the port it names.
func TestDaemonSetFoundByStatus(t *testing.T) {
	ds := get[*appsv1.DaemonSet](t, render(t, "overlays/local"), agentName)
	selector, err := labels.Parse(agentapi.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	if !selector.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("pod labels %v do not match status's selector %s", ds.Spec.Template.Labels, agentapi.PodSelector)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	_, metricsPort, err := net.SplitHostPort(nodeArgs(t, c)["metrics-address"])
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == agentapi.PortName })
	if i < 0 || strconv.Itoa(int(c.Ports[i].ContainerPort)) != metricsPort {
		t.Errorf("ports %v: want %s on --metrics-address's port %s", c.Ports, agentapi.PortName, metricsPort)
	}
}
