package capacity

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/provisioner"
)

// room is what GetCapacity answers for a class on this node.
type room struct {
	capacity *resource.Quantity
	// maxVolumeSize is nil when the driver does not say.
	maxVolumeSize *resource.Quantity
}

// sync is one pass: for every class of the driver, one object that says
// what the driver answers now, written only where it differs; objects of
// classes that are gone, duplicates and objects that do not name exactly
// this node are deleted. A class whose capacity the driver does not answer
// keeps the object it has.
func (p *Publisher) sync(ctx context.Context) error {
	classes, err := p.classes.List(labels.Everything())
	if err != nil {
		return err
	}
	existing, err := p.objects.List(p.selector)
	if err != nil {
		return err
	}
	byClass := map[string][]*storagev1.CSIStorageCapacity{}
	for _, o := range existing {
		byClass[o.StorageClassName] = append(byClass[o.StorageClassName], o)
	}
	var ours []*storagev1.StorageClass
	missing := false
	for _, class := range classes {
		if class.Provisioner == p.cfg.DriverName {
			ours = append(ours, class)
			missing = missing || !slices.ContainsFunc(byClass[class.Name], p.namesThisNode)
		}
	}
	// A new object needs its owner. Looking the owner up again then, and
	// not only once, follows a DaemonSet deleted with --cascade=orphan and
	// made anew: the garbage collector deletes the objects of the old
	// owner, and they come back owned by the new one.
	owners, err := p.ownerReferences(ctx, missing)
	if err != nil {
		return err
	}
	var errs []error
	for _, class := range ours {
		objs := byClass[class.Name]
		delete(byClass, class.Name)
		r, err := p.room(ctx, class)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, p.apply(ctx, class.Name, r, owners, objs))
	}
	// What is left is of classes that are gone or are not the driver's.
	for _, objs := range byClass {
		for _, o := range objs {
			errs = append(errs, p.delete(ctx, o, "its StorageClass is gone"))
		}
	}
	return errors.Join(errs...)
}

// room asks the driver over its socket what this node can still hold for
// class, with the parameters CreateVolume would get. No volume
// capabilities: the access mode is the claim's, not the class's, and the
// room does not depend on it.
//
// When the driver refuses the class's parameters, no volume of the class can
// be made anywhere, and publishing no room would leave its claims Pending
// with only the scheduler's "did not have enough free storage". The node's
// room without them lets the scheduler pick a node, whose provisioner then
// refuses the claim with a Warning event that names the bad parameter.
func (p *Publisher) room(ctx context.Context, class *storagev1.StorageClass) (room, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	req := &csi.GetCapacityRequest{
		Parameters:         provisioner.DriverParameters(class),
		AccessibleTopology: &csi.Topology{Segments: map[string]string{p.cfg.TopologyKey: p.cfg.NodeName}},
	}
	resp, err := p.cfg.ControllerClient.GetCapacity(ctx, req)
	if status.Code(err) == codes.InvalidArgument && len(req.Parameters) > 0 {
		klog.FromContext(ctx).V(4).Info("The driver refuses the class's parameters; publishing the node's room",
			"storageClass", class.Name, "err", err)
		req.Parameters = nil
		resp, err = p.cfg.ControllerClient.GetCapacity(ctx, req)
	}
	if err != nil {
		return room{}, fmt.Errorf("asking the driver for the capacity of class %s: %w", class.Name, err)
	}
	r := room{capacity: resource.NewQuantity(resp.GetAvailableCapacity(), resource.BinarySI)}
	if m := resp.GetMaximumVolumeSize(); m != nil {
		r.maxVolumeSize = resource.NewQuantity(m.GetValue(), resource.BinarySI)
	}
	return r, nil
}

// apply makes the objects of one class a single one that says r: the
// oldest that names this node is kept and updated if it differs, the others
// are deleted; without one, one is created.
func (p *Publisher) apply(ctx context.Context, class string, r room, owners []metav1.OwnerReference, objs []*storagev1.CSIStorageCapacity) error {
	var keep *storagev1.CSIStorageCapacity
	var errs []error
	for _, o := range oldestFirst(objs) {
		switch {
		case !p.namesThisNode(o):
			// nodeTopology cannot be changed; it was not made here.
			errs = append(errs, p.delete(ctx, o, "its nodeTopology does not name exactly this node"))
		case keep == nil:
			keep = o
		default:
			errs = append(errs, p.delete(ctx, o, "another object is kept for the class"))
		}
	}
	want := p.object(class, r, owners)
	switch {
	case keep == nil:
		errs = append(errs, p.write(ctx, "create", want))
	case !sameContent(keep, want):
		update := keep.DeepCopy()
		update.Capacity, update.MaximumVolumeSize, update.OwnerReferences = want.Capacity, want.MaximumVolumeSize, want.OwnerReferences
		errs = append(errs, p.write(ctx, "update", update))
	}
	return errors.Join(errs...)
}

// object is the object this node publishes for class.
func (p *Publisher) object(class string, r room, owners []metav1.OwnerReference) *storagev1.CSIStorageCapacity {
	return &storagev1.CSIStorageCapacity{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    generateName,
			Namespace:       p.cfg.Namespace,
			Labels:          Labels(p.cfg.DriverName, p.cfg.NodeName),
			OwnerReferences: owners,
		},
		NodeTopology:      &metav1.LabelSelector{MatchLabels: map[string]string{p.cfg.TopologyKey: p.cfg.NodeName}},
		StorageClassName:  class,
		Capacity:          r.capacity,
		MaximumVolumeSize: r.maxVolumeSize,
	}
}

// namesThisNode tells whether the object's nodeTopology selects exactly
// this node, as the objects made here do.
func (p *Publisher) namesThisNode(o *storagev1.CSIStorageCapacity) bool {
	t := o.NodeTopology
	return t != nil && len(t.MatchExpressions) == 0 && len(t.MatchLabels) == 1 && t.MatchLabels[p.cfg.TopologyKey] == p.cfg.NodeName
}

// sameContent tells whether o already says what want does.
func sameContent(o, want *storagev1.CSIStorageCapacity) bool {
	return sameQuantity(o.Capacity, want.Capacity) && sameQuantity(o.MaximumVolumeSize, want.MaximumVolumeSize) &&
		equality.Semantic.DeepEqual(o.OwnerReferences, want.OwnerReferences)
}

func sameQuantity(a, b *resource.Quantity) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Cmp(*b) == 0
}

// oldestFirst sorts objects by age, then name, so every pass keeps the same.
func oldestFirst(objs []*storagev1.CSIStorageCapacity) []*storagev1.CSIStorageCapacity {
	return slices.SortedFunc(slices.Values(objs), func(a, b *storagev1.CSIStorageCapacity) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
}

// write creates or updates o.
func (p *Publisher) write(ctx context.Context, operation string, o *storagev1.CSIStorageCapacity) error {
	api := p.cfg.Client.StorageV1().CSIStorageCapacities(p.cfg.Namespace)
	var err error
	var written *storagev1.CSIStorageCapacity
	if operation == "create" {
		written, err = api.Create(ctx, o, metav1.CreateOptions{})
	} else {
		written, err = api.Update(ctx, o, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("%s CSIStorageCapacity of class %s: %w", operation, o.StorageClassName, err)
	}
	p.writes.WithLabelValues(operation).Inc()
	klog.FromContext(ctx).V(2).Info("Published storage capacity", "operation", operation, "csiStorageCapacity", klog.KObj(written),
		"storageClass", written.StorageClassName, "capacity", written.Capacity, "maximumVolumeSize", written.MaximumVolumeSize)
	return nil
}

// delete deletes o and says why.
func (p *Publisher) delete(ctx context.Context, o *storagev1.CSIStorageCapacity, why string) error {
	deleted, err := Delete(ctx, p.cfg.Client, o)
	if deleted {
		p.writes.WithLabelValues("delete").Inc()
		klog.FromContext(ctx).V(2).Info("Deleted storage capacity", "csiStorageCapacity", klog.KObj(o),
			"storageClass", o.StorageClassName, "reason", why)
	}
	return err
}

// Delete deletes o, that very object (a UID precondition), and tells
// whether it did: one that is gone already is no error.
func Delete(ctx context.Context, client kubernetes.Interface, o *storagev1.CSIStorageCapacity) (bool, error) {
	uid := o.UID
	err := client.StorageV1().CSIStorageCapacities(o.Namespace).Delete(ctx, o.Name,
		metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("deleting CSIStorageCapacity %s: %w", klog.KObj(o), err)
	}
	return true, nil
}

// ownerReferences returns the objects' owner: the controller of the pod
// Config.OwnerPod, or the pod when nothing controls it; none without
// OwnerPod. The pod is read at the first pass and again when refresh is set.
func (p *Publisher) ownerReferences(ctx context.Context, refresh bool) ([]metav1.OwnerReference, error) {
	if p.cfg.OwnerPod == "" {
		return nil, nil
	}
	if p.owner == nil || refresh {
		pod, err := p.cfg.Client.CoreV1().Pods(p.cfg.Namespace).Get(ctx, p.cfg.OwnerPod, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("looking up pod %s, whose owner is to own the CSIStorageCapacity objects: %w",
				klog.KRef(p.cfg.Namespace, p.cfg.OwnerPod), err)
		}
		owner := ownerOf(pod)
		if p.owner == nil || *p.owner != owner {
			klog.FromContext(ctx).V(2).Info("Owner of the published storage capacity",
				"kind", owner.Kind, "name", owner.Name, "uid", owner.UID)
		}
		p.owner = &owner
	}
	return []metav1.OwnerReference{*p.owner}, nil
}

// ownerOf returns a reference to the pod's controller, or to the pod. It
// neither blocks the owner's deletion (that needs rights on the owner) nor
// claims to be the controller: the garbage collector only needs the owner.
func ownerOf(pod *v1.Pod) metav1.OwnerReference {
	if c := metav1.GetControllerOf(pod); c != nil {
		return metav1.OwnerReference{APIVersion: c.APIVersion, Kind: c.Kind, Name: c.Name, UID: c.UID}
	}
	return metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}
}
