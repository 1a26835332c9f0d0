package deploy_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "helm/stickyvol"
	releaseName = "stickyvol"
	// releaseNamespace is where these tests install the chart: not the
	// base's namespace, so a template that names a namespace instead of
	// using .Release.Namespace shows up as a difference.
	releaseNamespace = "storage"
)

// helmLabels are the labels the chart adds to the base's to name its release
// and itself; Helm's own annotations start with meta.helm.sh/.
var helmLabels = []string{
	"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version",
}

// renderManifests renders the chart's templates as `helm install
// --dry-run=client -n storage stickyvol deploy/helm/stickyvol -f values.yaml`
// does, with values given as YAML: coalesced with values.yaml and checked
// against values.schema.json. The engine is strict, so a template that reads
// a value missing from values.yaml fails instead of rendering nothing.
func renderManifests(t *testing.T, values string) (map[string]string, error) {
	t.Helper()
	return renderManifestsFor(t, values, nil)
}

// withSnapshotAPI are the capabilities of a cluster that serves the
// snapshot API, as Helm reads them from its discovery (group/version and
// group/version/Kind): the local cluster, one with the external-snapshotter.
var withSnapshotAPI = func() *common.Capabilities {
	caps := *common.DefaultCapabilities
	caps.APIVersions = append(slices.Clone(caps.APIVersions),
		"snapshot.storage.k8s.io/v1", "snapshot.storage.k8s.io/v1/VolumeSnapshotClass")
	return &caps
}()

// renderManifestsFor is renderManifests on a cluster with the given
// capabilities; nil stands for Helm's defaults (`helm template`), which hold
// no CRD's API.
func renderManifestsFor(t *testing.T, values string, caps *common.Capabilities) (map[string]string, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals, err := common.ReadValues([]byte(values))
	if err != nil {
		t.Fatalf("values %q: %v", values, err)
	}
	release := common.ReleaseOptions{Name: releaseName, Namespace: releaseNamespace, Revision: 1, IsInstall: true}
	top, err := chartutil.ToRenderValues(ch, vals, release, caps)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	return engine.Engine{Strict: true}.RenderWithContext(t.Context(), ch, top)
}

// renderChart renders the chart with values on a cluster with the given
// capabilities (nil: Helm's defaults) and decodes every object it yields
// strictly, as render does for a kustomization.
func renderChart(t *testing.T, values string, caps *common.Capabilities) []object {
	t.Helper()
	files, err := renderManifestsFor(t, values, caps)
	if err != nil {
		t.Fatalf("helm template with values %q: %v", values, err)
	}
	var names []string
	for name := range files {
		if strings.HasSuffix(name, ".yaml") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var objs []object
	for _, name := range names {
		reader := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(files[name])))
		for i := 0; ; i++ {
			doc, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", name, i, err)
			}
			where := fmt.Sprintf("%s: document %d", name, i)
			var meta metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				t.Fatalf("%s: %v\n%s", where, err, doc)
			}
			switch {
			case meta == metav1.TypeMeta{}: // only comments, or nothing: a template that is off
				continue
			case meta.GroupVersionKind() == serviceMonitorKind:
				objs = append(objs, decodeServiceMonitor(t, where, doc))
			default:
				objs = append(objs, decode(t, where, doc))
			}
		}
	}
	return objs
}

var serviceMonitorKind = schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1, its Go type's field names) that the chart
// writes. It is decoded strictly too: a field the chart misspells, or one
// this type lacks, fails the test.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

func (m *serviceMonitor) DeepCopyObject() runtime.Object {
	data, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	var c serviceMonitor
	if err := json.Unmarshal(data, &c); err != nil {
		panic(err)
	}
	return &c
}

func decodeServiceMonitor(t *testing.T, where string, doc []byte) *serviceMonitor {
	t.Helper()
	var m serviceMonitor
	if err := yaml.UnmarshalStrict(doc, &m); err != nil {
		t.Fatalf("%s: not a valid ServiceMonitor: %v", where, err)
	}
	return &m
}

// renderInNamespace renders a kustomization moved into namespace, as a
// kustomization with `namespace:` and dir as its resource would, less its
// Namespace object: what the chart must render when installed there.
func renderInNamespace(t *testing.T, dir, namespace string) []object {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	top := t.TempDir()
	rel, err := filepath.Rel(top, abs) // kustomize refuses absolute paths
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf("namespace: %s\nresources:\n- %s\n", namespace, rel)
	if err := os.WriteFile(filepath.Join(top, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := krusty.MakeDefaultOptions()
	opts.LoadRestrictions = types.LoadRestrictionsNone // dir is outside top
	resources, err := krusty.MakeKustomizer(opts).Run(filesys.MakeFsOnDisk(), top)
	if err != nil {
		t.Fatalf("kustomize %s in namespace %s: %v", dir, namespace, err)
	}
	var objs []object
	for _, r := range resources.Resources() {
		if r.GetKind() == "Namespace" {
			continue
		}
		// kustomize knows the scope of built-in kinds only, and moves a
		// CRD's cluster-scoped objects into the namespace too.
		if r.GetGvk().Group == snapv1.GroupName {
			if err := r.SetNamespace(""); err != nil {
				t.Fatal(err)
			}
		}
		y, err := r.AsYAML()
		if err != nil {
			t.Fatalf("kustomize %s: %s: %v", dir, r.CurId(), err)
		}
		objs = append(objs, decode(t, fmt.Sprintf("%s: %s", dir, r.CurId()), y))
	}
	return objs
}

// objectID names an object as kubectl does: Kind/namespace/name.
func objectID(o object) string {
	kind := o.GetObjectKind().GroupVersionKind().Kind
	if ns := o.GetNamespace(); ns != "" {
		return kind + "/" + ns + "/" + o.GetName()
	}
	return kind + "/" + o.GetName()
}

// withoutHelm returns the objects as field maps by ID, without the labels
// and annotations that name a Helm release or chart, on the objects and on
// their pod templates.
func withoutHelm(t *testing.T, objs []object) map[string]map[string]any {
	t.Helper()
	byID := map[string]map[string]any{}
	for _, o := range objs {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			t.Fatalf("%s: %v", objectID(o), err)
		}
		for _, meta := range [][]string{{"metadata"}, {"spec", "template", "metadata"}} {
			dropKeys(u, append(meta, "labels"), func(k string) bool { return slices.Contains(helmLabels, k) })
			dropKeys(u, append(meta, "annotations"), func(k string) bool { return strings.HasPrefix(k, "meta.helm.sh/") })
		}
		id := objectID(o)
		if _, dup := byID[id]; dup {
			t.Errorf("%s is rendered twice", id)
		}
		byID[id] = u
	}
	return byID
}

// dropKeys deletes the keys of the map at path that drop selects, and the
// map itself once it is empty.
func dropKeys(u map[string]any, path []string, drop func(string) bool) {
	v, found, err := unstructured.NestedFieldNoCopy(u, path...)
	m, ok := v.(map[string]any)
	if !found || err != nil || !ok {
		return
	}
	for k := range m {
		if drop(k) {
			delete(m, k)
		}
	}
	if len(m) == 0 {
		unstructured.RemoveNestedField(u, path...)
	}
}

// sameObjects fails the test for every object that one side renders and the
// other does not, and shows how each common object differs.
func sameObjects(t *testing.T, wantFrom string, want []object, gotFrom string, got []object) {
	t.Helper()
	w, g := withoutHelm(t, want), withoutHelm(t, got)
	var ids []string
	for id := range w {
		ids = append(ids, id)
	}
	for id := range g {
		if _, ok := w[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		wo, inWant := w[id]
		gotObj, inGot := g[id]
		switch {
		case !inGot:
			t.Errorf("%s renders %s, %s does not", wantFrom, id, gotFrom)
		case !inWant:
			t.Errorf("%s renders %s, %s does not", gotFrom, id, wantFrom)
		default:
			if diff := cmp.Diff(wo, gotObj); diff != "" {
				t.Errorf("%s differs (-%s +%s):\n%s", id, wantFrom, gotFrom, diff)
			}
		}
	}
}

// TestChartMatchesKustomize keeps the chart in line with deploy/base, the
// source of truth: with its defaults the chart renders the base's objects
// field for field, apart from the Namespace (the release namespace is made
// by `helm install --create-namespace`) and the labels that name the
// release. The overlays' changes are a value each. The local overlay adds
// the VolumeSnapshotClass of deploy/snapshots, which the chart renders on a
// cluster that serves the snapshot API, as the local cluster does.
func TestChartMatchesKustomize(t *testing.T) {
	for _, tc := range []struct {
		dir, values string
		caps        *common.Capabilities
	}{
		{"base", "", nil},
		{"overlays/kind", "storageClass: {defaultClass: true}", nil},
		{"overlays/local", readValues(t, "helm/local-values.yaml"), withSnapshotAPI},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			want := renderInNamespace(t, tc.dir, releaseNamespace)
			sameObjects(t, "kustomize "+tc.dir, want, "chart", renderChart(t, tc.values, tc.caps))
			if t.Failed() && tc.values != "" {
				t.Logf("chart values standing for the overlay's changes (change them with the overlay): %s", tc.values)
			}
		})
	}
}

// customValues changes every value from its default.
const customValues = `
image: {repository: registry.example.com/storage/stickyvol, tag: v0.1.0, pullPolicy: Always}
kubeletRoot: /var/lib/k0s/kubelet
dataRoot: /srv/stickyvol
capacity: 200Gi
maxVolumes: 1000000
publishCapacity: false
logLevel: 5
controller: {replicas: 3, extraArgs: [--kube-api-qps=50], priorityClassName: ""}
storageClass:
  name: local-fast
  defaultClass: true
  volumeBindingMode: Immediate
  reclaimPolicy: Retain
  parameters: {directoryMode: "0750"}
  mountOptions: [nosuid, nodev]
snapshotClass: {name: local-fast-snapshots, deletionPolicy: Retain}
nodeSelector: {stickyvol.dev/disk: ssd}
tolerations:
- {key: dedicated, operator: Equal, value: storage, effect: NoSchedule}
resources:
  requests: {cpu: 50m, memory: 64Mi}
  limits: {memory: 256Mi}
priorityClassName: ""
metrics:
  port: 9900
  serviceMonitor: {enabled: true, labels: {release: prom}, interval: 30s}
extraArgs: [--kube-api-qps=200, --threadiness=16]
podAnnotations: {stickyvol.dev/image-digest: "sha256:0123"}
`

func TestChartLint(t *testing.T) {
	for name, values := range map[string]string{"defaults": "", "custom values": customValues} {
		vals, err := common.ReadValues([]byte(values))
		if err != nil {
			t.Fatal(err)
		}
		result := lint.RunAll(chartDir, vals, releaseNamespace)
		for _, m := range result.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint, %s: %v", name, m)
			} else {
				t.Logf("helm lint, %s: %v", name, m)
			}
		}
	}
}

func TestChartCustomValues(t *testing.T) {
	objs := renderChart(t, customValues, withSnapshotAPI)
	ds := get[*appsv1.DaemonSet](t, objs, agentName)
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	flags := nodeArgs(t, c)

	for flag, want := range map[string]string{
		"kubelet-root": "/var/lib/k0s/kubelet", "data-root": "/srv/stickyvol", "capacity": "200Gi",
		"max-volumes": "1000000", "metrics-address": ":9900", "v": "5",
		"kube-api-qps": "200", "threadiness": "16", "publish-capacity": "false",
	} {
		if flags[flag] != want {
			t.Errorf("--%s=%q, want %q", flag, flags[flag], want)
		}
	}
	for _, root := range []string{"/var/lib/k0s/kubelet", "/srv/stickyvol"} {
		if m := hostMount(t, pod, c, root); m.hostPath.Path != root {
			t.Errorf("%s is mounted from the host's %s", root, m.hostPath.Path)
		}
	}
	if c.Image != "registry.example.com/storage/stickyvol:v0.1.0" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image %s pull %s", c.Image, c.ImagePullPolicy)
	}
	if got := c.Resources.Limits.Memory().String(); got != "256Mi" || c.Resources.Requests.Cpu().String() != "50m" {
		t.Errorf("resources %v", c.Resources)
	}
	if got := ds.Spec.Template.Annotations["stickyvol.dev/image-digest"]; got != "sha256:0123" {
		t.Errorf("pod annotation %q, want the podAnnotations value", got)
	}
	if pod.PriorityClassName != "" {
		t.Errorf("priorityClassName %q, want none", pod.PriorityClassName)
	}
	for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if probe == nil || probe.HTTPGet == nil {
			continue // the defaults' test holds the probes to the base's
		}
		port := probe.HTTPGet.Port.String()
		if i := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == port }); i < 0 || c.Ports[i].ContainerPort != 9900 {
			t.Errorf("probe of %s on port %q, not on container port 9900: %v", probe.HTTPGet.Path, port, c.Ports)
		}
	}

	ctrl := get[*appsv1.Deployment](t, objs, ctrlName)
	if *ctrl.Spec.Replicas != 3 || !slices.Contains(ctrl.Spec.Template.Spec.Containers[0].Args, "--kube-api-qps=50") ||
		ctrl.Spec.Template.Spec.PriorityClassName != "" {
		t.Errorf("controller: replicas %d, args %q, priorityClassName %q; want the controller values",
			*ctrl.Spec.Replicas, ctrl.Spec.Template.Spec.Containers[0].Args, ctrl.Spec.Template.Spec.PriorityClassName)
	}

	// The tolerations replace the default's, which tolerates everything.
	ssd := map[string]string{"stickyvol.dev/disk": "ssd"}
	dedicated := corev1.Taint{Key: "dedicated", Value: "storage", Effect: corev1.TaintEffectNoSchedule}
	for _, tc := range []struct {
		node *corev1.Node
		want bool
	}{
		{node("ssd", ssd), true},
		{node("ssd-dedicated", ssd, dedicated), true},
		{node("hdd", map[string]string{"stickyvol.dev/disk": "hdd"}), false},
		{node("ssd-control-plane", ssd, corev1.Taint{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}), false},
	} {
		if got := runsOn(t, ds, tc.node); got != tc.want {
			t.Errorf("agent on node %s = %v, want %v", tc.node.Name, got, tc.want)
		}
	}

	// Nothing published, so the scheduler must not look for it: it would
	// find no room anywhere.
	if d := get[*storagev1.CSIDriver](t, objs, driverName); d.Spec.StorageCapacity == nil || *d.Spec.StorageCapacity {
		t.Errorf("CSIDriver storageCapacity %v with publishCapacity false, want false", show(d.Spec.StorageCapacity))
	}

	sc := get[*storagev1.StorageClass](t, objs, "local-fast")
	if sc.Provisioner != driverName || sc.Annotations[defaultClass] != "true" ||
		show(sc.VolumeBindingMode) != storagev1.VolumeBindingImmediate ||
		show(sc.ReclaimPolicy) != corev1.PersistentVolumeReclaimRetain ||
		sc.Parameters["directoryMode"] != "0750" || !slices.Equal(sc.MountOptions, []string{"nosuid", "nodev"}) {
		t.Errorf("StorageClass %s: provisioner %s, annotations %v, binding %v, reclaim %v, parameters %v, mount options %v",
			sc.Name, sc.Provisioner, sc.Annotations, show(sc.VolumeBindingMode), show(sc.ReclaimPolicy), sc.Parameters, sc.MountOptions)
	}

	vsc := get[*snapv1.VolumeSnapshotClass](t, objs, "local-fast-snapshots")
	if vsc.Driver != driverName || vsc.DeletionPolicy != snapv1.VolumeSnapshotContentRetain {
		t.Errorf("VolumeSnapshotClass %s: driver %s, deletionPolicy %s; want %s, Retain", vsc.Name, vsc.Driver, vsc.DeletionPolicy, driverName)
	}

	// Prometheus finds the Service by the ServiceMonitor's selector, the
	// agents' pods through the Service, and scrapes the port named alike.
	svc := get[*corev1.Service](t, objs, "stickyvol-node-metrics")
	sm := get[*serviceMonitor](t, objs, agentName)
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(svc.Labels)) {
		t.Errorf("ServiceMonitor selector %v does not select Service labels %v (%v)", sm.Spec.Selector, svc.Labels, err)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("Service selector %v does not select the agents' pods %v", svc.Spec.Selector, ds.Spec.Template.Labels)
	}
	if svc.Namespace != releaseNamespace || sm.Namespace != releaseNamespace ||
		!slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{releaseNamespace}) {
		t.Errorf("Service in %s, ServiceMonitor in %s looking in %v; want all %s",
			svc.Namespace, sm.Namespace, sm.Spec.NamespaceSelector.MatchNames, releaseNamespace)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "http-metrics" || svc.Spec.Ports[0].Port != 9900 {
		t.Errorf("Service ports %v, want 9900 to the pods' http-metrics", svc.Spec.Ports)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != svc.Spec.Ports[0].Name ||
		sm.Spec.Endpoints[0].Path != "/metrics" || sm.Spec.Endpoints[0].Interval != "30s" {
		t.Errorf("ServiceMonitor endpoints %+v, want /metrics on port %s every 30s", sm.Spec.Endpoints, svc.Spec.Ports[0].Name)
	}
	if sm.Labels["release"] != "prom" {
		t.Errorf("ServiceMonitor labels %v, want release=prom for Prometheus to select it", sm.Labels)
	}
}

// TestChartOptionalObjects checks which objects appear only when asked.
// The VolumeSnapshotClass needs the cluster to serve the snapshot API:
// without it, `helm install` would fail on a kind the API server does not
// know.
func TestChartOptionalObjects(t *testing.T) {
	for _, tc := range []struct {
		values                        string
		snapshotAPI                   bool
		class, snapshotClass, monitor bool
	}{
		{values: "", class: true},
		{values: "", snapshotAPI: true, class: true, snapshotClass: true},
		{values: "storageClass: {create: false}"},
		{values: "snapshotClass: {create: false}", snapshotAPI: true, class: true},
		{values: "metrics: {serviceMonitor: {enabled: true}}", class: true, monitor: true},
	} {
		caps := (*common.Capabilities)(nil)
		if tc.snapshotAPI {
			caps = withSnapshotAPI
		}
		objs := renderChart(t, tc.values, caps)
		if got := len(all[*storagev1.StorageClass](objs)) == 1; got != tc.class {
			t.Errorf("values %q: StorageClass rendered %v, want %v", tc.values, got, tc.class)
		}
		if got := len(all[*snapv1.VolumeSnapshotClass](objs)) == 1; got != tc.snapshotClass {
			t.Errorf("values %q, snapshot API served %v: VolumeSnapshotClass rendered %v, want %v", tc.values, tc.snapshotAPI, got, tc.snapshotClass)
		}
		if got := len(all[*serviceMonitor](objs)) == 1 && len(all[*corev1.Service](objs)) == 1; got != tc.monitor {
			t.Errorf("values %q: Service and ServiceMonitor rendered %v, want %v", tc.values, got, tc.monitor)
		}
	}
}

// TestChartRefusesBadValues checks that a mistake in the values stops
// `helm install` with a message naming it, instead of a broken agent.
func TestChartRefusesBadValues(t *testing.T) {
	for _, tc := range []struct{ values, want string }{
		{"dataroot: /srv/stickyvol", "dataroot"},
		{"storageClass: {default: true}", "default"},
		{"dataRoot: srv/stickyvol", "dataRoot"},
		{"dataRoot: /var/lib/kubelet/stickyvol", "must not lie in kubeletRoot"},
		{"dataRoot: /var/lib/kubelet/", "must not lie in kubeletRoot"},
		{"capacity: 10GB", "capacity"},
		{"maxVolumes: -1", "maxVolumes"},
		{"publishCapacity: \"no\"", "publishCapacity"},
		{"storageClass: {parameters: {directoryMode: 0750}}", "directoryMode"},
		{"storageClass: {volumeBindingMode: WaitForFirstconsumer}", "volumeBindingMode"},
		{"snapshotClass: {deletionPolicy: delete}", "deletionPolicy"},
		{"snapshotClass: {name: \"\"}", "name"},
		{"metrics: {port: 0}", "port"},
	} {
		_, err := renderManifests(t, tc.values)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("values %q: error %v, want one naming %q", tc.values, err, tc.want)
		}
	}
}

// readValues reads a values file of the tree.
func readValues(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
