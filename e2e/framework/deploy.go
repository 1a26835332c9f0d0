package framework

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// annImage on the agent's pod template names the image digest deployed, so
// that applying a rebuilt image under the same tag rolls the pods, as
// `kubectl rollout restart` would; without it the spec would not change and
// the old binary would keep running.
const annImage = "stickyvol.dev/image-digest"

// DeployConfig says what Deploy applies.
type DeployConfig struct {
	// Overlay is a kustomization directory of the source tree, e.g.
	// LocalOverlay.
	Overlay string
	// Image is the agent image loaded into the nodes.
	Image Image
	// AgentArgs are appended to the arguments of the agent container, e.g.
	// --capacity=1Gi.
	AgentArgs []string
}

// Deploy renders the overlay as `kubectl apply -k` does, applies it with
// server-side apply, and waits until the agent runs on every real node and
// each node's kubelet has registered the driver (its CSINode lists it).
func (f *Framework) Deploy(ctx context.Context, cfg DeployConfig, logf Logf) error {
	objs, err := Render(f.Path(cfg.Overlay))
	if err != nil {
		return err
	}
	for i, obj := range objs {
		switch {
		case obj.GetKind() == "DaemonSet" && obj.GetName() == DaemonSetName:
			objs[i], err = customizeAgent(obj, cfg)
		case obj.GetKind() == "Deployment" && obj.GetName() == ControllerName:
			objs[i], err = annotateImage(obj, cfg)
		}
		if err != nil {
			return err
		}
	}
	if err := f.Apply(ctx, "", objs); err != nil {
		return err
	}
	logf("applied %s (%d objects)", cfg.Overlay, len(objs))
	return f.waitDeployed(ctx, logf)
}

// waitDeployed waits until the agent runs on every real node, each node's
// kubelet has registered the driver, and the controller's replicas are
// ready.
func (f *Framework) waitDeployed(ctx context.Context, logf Logf) error {
	if err := f.WaitForDaemonSet(ctx, Namespace, DaemonSetName); err != nil {
		return err
	}
	logf("DaemonSet %s/%s ready on every node", Namespace, DaemonSetName)
	if err := f.WaitForDeployment(ctx, Namespace, ControllerName); err != nil {
		return err
	}
	logf("Deployment %s/%s ready", Namespace, ControllerName)
	if err := f.WaitForDriverRegistered(ctx); err != nil {
		return err
	}
	logf("every node's CSINode lists %s", DriverName)
	return nil
}

// annotateImage adds the image annotation to a workload's pod template. It
// edits the rendered object rather than a typed one, whose conversion would
// add empty fields to what is applied.
func annotateImage(obj *unstructured.Unstructured, cfg DeployConfig) (*unstructured.Unstructured, error) {
	obj = obj.DeepCopy()
	if err := unstructured.SetNestedField(obj.Object, cfg.Image.Digest.String(),
		"spec", "template", "metadata", "annotations", annImage); err != nil {
		return nil, fmt.Errorf("%s %s: %w", obj.GetKind(), obj.GetName(), err)
	}
	return obj, nil
}

// customizeAgent adds the image annotation and cfg.AgentArgs to the agent's
// DaemonSet.
func customizeAgent(obj *unstructured.Unstructured, cfg DeployConfig) (*unstructured.Unstructured, error) {
	obj, err := annotateImage(obj, cfg)
	if err != nil {
		return nil, err
	}
	containers, _, err := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
	if err != nil {
		return nil, fmt.Errorf("DaemonSet %s: %w", obj.GetName(), err)
	}
	if len(containers) == 0 {
		return nil, fmt.Errorf("DaemonSet %s: no containers", obj.GetName())
	}
	agent, ok := containers[0].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("DaemonSet %s: malformed container", obj.GetName())
	}
	args, _, _ := unstructured.NestedStringSlice(agent, "args")
	if err := unstructured.SetNestedStringSlice(agent, append(args, cfg.AgentArgs...), "args"); err != nil {
		return nil, err
	}
	containers[0] = agent
	return obj, unstructured.SetNestedSlice(obj.Object, containers, "spec", "template", "spec", "containers")
}

// Render builds a kustomization directory as `kubectl apply -k dir` does.
func Render(dir string) ([]*unstructured.Unstructured, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range resources.Resources() {
		// Through JSON: the map kustomize gives holds Go ints, which
		// unstructured objects do not (they want int64).
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("kustomize %s: %s: %w", dir, r.CurId(), err)
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("kustomize %s: %s: %w", dir, r.CurId(), err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// ReadManifests decodes every object of a multi-document YAML file, as
// `kubectl apply -f` reads it.
func ReadManifests(path string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		data, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if string(bytes.TrimSpace(data)) == "null" { // only comments
			continue
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		objs = append(objs, obj)
	}
}

// ApplyFile applies the objects of a YAML file of the source tree, in
// namespace for those that name none.
func (f *Framework) ApplyFile(ctx context.Context, namespace, rel string) ([]*unstructured.Unstructured, error) {
	objs, err := ReadManifests(f.Path(rel))
	if err != nil {
		return nil, err
	}
	return objs, f.Apply(ctx, namespace, objs)
}

// Apply applies objects in order with server-side apply, as
// `kubectl apply --server-side --force-conflicts` does. Namespaced objects
// that name no namespace go to namespace.
func (f *Framework) Apply(ctx context.Context, namespace string, objs []*unstructured.Unstructured) error {
	logger := klog.FromContext(ctx)
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		mapping, err := f.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		client := f.Dynamic.Resource(mapping.Resource)
		var applied *unstructured.Unstructured
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			if obj.GetNamespace() == "" {
				obj.SetNamespace(namespace)
			}
			applied, err = client.Namespace(obj.GetNamespace()).Apply(ctx, obj.GetName(), obj,
				metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		} else {
			applied, err = client.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		}
		if err != nil {
			return fmt.Errorf("applying %s %s: %w", gvk.Kind, klog.KObj(obj), err)
		}
		logger.V(2).Info("Applied", "kind", gvk.Kind, "object", klog.KObj(applied))
	}
	return nil
}

// WaitForDaemonSet waits until the DaemonSet's current pods run and are
// available on every real node of the cluster.
func (f *Framework) WaitForDaemonSet(ctx context.Context, namespace, name string) error {
	nodes := len(f.Cluster.Nodes())
	_, err := WaitFor(ctx, f.DaemonSets(namespace, name), &appsv1.DaemonSet{}, func(dss []*appsv1.DaemonSet) (bool, error) {
		if len(dss) == 0 {
			return false, nil
		}
		s := dss[0].Status
		return s.ObservedGeneration >= dss[0].Generation && int(s.DesiredNumberScheduled) == nodes &&
			s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.NumberAvailable == s.DesiredNumberScheduled, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for DaemonSet %s/%s on all %d nodes: %w", namespace, name, nodes, err)
	}
	return nil
}

// WaitForDeployment waits until every replica of the Deployment's current
// template is available.
func (f *Framework) WaitForDeployment(ctx context.Context, namespace, name string) error {
	_, err := WaitFor(ctx, f.Deployments(namespace, name), &appsv1.Deployment{}, func(ds []*appsv1.Deployment) (bool, error) {
		if len(ds) == 0 || ds[0].Spec.Replicas == nil {
			return false, nil
		}
		d, want := ds[0], *ds[0].Spec.Replicas
		return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want &&
			d.Status.AvailableReplicas == want && d.Status.Replicas == want, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for Deployment %s/%s: %w", namespace, name, err)
	}
	return nil
}

// WaitForDriverRegistered waits until every real node's CSINode lists the
// driver: its kubelet found the registration socket and called NodeGetInfo.
func (f *Framework) WaitForDriverRegistered(ctx context.Context) error {
	var want []string
	for _, n := range f.Cluster.Nodes() {
		want = append(want, n.Name)
	}
	_, err := WaitFor(ctx, f.CSINodes(), &storagev1.CSINode{}, func(csiNodes []*storagev1.CSINode) (bool, error) {
		have := 0
		for _, cn := range csiNodes {
			if slices.Contains(want, cn.Name) && listsDriver(cn) {
				have++
			}
		}
		return have == len(want), nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the CSINodes of %v to list %s: %w", want, DriverName, err)
	}
	return nil
}
