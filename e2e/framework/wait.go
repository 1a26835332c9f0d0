package framework

import (
	"context"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// Object is what every typed Kubernetes object is.
type Object interface {
	runtime.Object
	metav1.Object
}

// WaitFor lists and watches what lw selects and returns the objects once cond
// holds for them. cond sees every selected object that exists at that moment,
// sorted by namespace and name, first after the initial list and then after
// each change, so "this pod is gone" is as easy to wait for as "this pod
// runs". objType is an empty object of the listed type, e.g. &v1.Pod{}.
// It returns when ctx is done, with the objects last seen.
func WaitFor[T Object](ctx context.Context, lw cache.ListerWatcher, objType T, cond func([]T) (bool, error)) ([]T, error) {
	var store cache.Store
	var last []T
	check := func() (bool, error) {
		items := store.List()
		last = make([]T, 0, len(items))
		for _, item := range items {
			if obj, ok := item.(T); ok {
				last = append(last, obj)
			}
		}
		sort.Slice(last, func(i, j int) bool {
			if last[i].GetNamespace() != last[j].GetNamespace() {
				return last[i].GetNamespace() < last[j].GetNamespace()
			}
			return last[i].GetName() < last[j].GetName()
		})
		return cond(last)
	}
	// The precondition runs once the informer has listed; it keeps the
	// store so that each watch event can check the whole selection. The
	// store is updated before an event is delivered, so a check may see
	// later changes too, which is what "the state now" means.
	_, err := watchtools.UntilWithSync(ctx, lw, objType, func(s cache.Store) (bool, error) {
		store = s
		return check()
	}, func(watch.Event) (bool, error) { return check() })
	return last, err
}

// WaitForOne waits until cond holds for the object lw selects by name; cond
// gets nil while it does not exist (or after it was deleted).
func WaitForOne[T Object](ctx context.Context, lw cache.ListerWatcher, objType T, cond func(T) (bool, error)) (T, error) {
	var zero T
	objs, err := WaitFor(ctx, lw, objType, func(objs []T) (bool, error) {
		if len(objs) == 0 {
			return cond(zero)
		}
		return cond(objs[0])
	})
	if len(objs) == 0 {
		return zero, err
	}
	return objs[0], err
}

// listWatch selects objects of a resource by namespace (empty: all), name
// (empty: all) and labels (nil: all).
func listWatch(c cache.Getter, resource, namespace, name string, sel labels.Selector) cache.ListerWatcher {
	return cache.NewFilteredListWatchFromClient(c, resource, namespace, func(o *metav1.ListOptions) {
		if name != "" {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}
		if sel != nil {
			o.LabelSelector = sel.String()
		}
	})
}

// Pods selects pods of a namespace by labels (nil: all).
func (f *Framework) Pods(namespace string, sel labels.Selector) cache.ListerWatcher {
	return listWatch(f.Client.CoreV1().RESTClient(), "pods", namespace, "", sel)
}

// Pod selects one pod.
func (f *Framework) Pod(namespace, name string) cache.ListerWatcher {
	return listWatch(f.Client.CoreV1().RESTClient(), "pods", namespace, name, nil)
}

// Claims selects the claims of a namespace.
func (f *Framework) Claims(namespace string) cache.ListerWatcher {
	return listWatch(f.Client.CoreV1().RESTClient(), "persistentvolumeclaims", namespace, "", nil)
}

// Claim selects one claim.
func (f *Framework) Claim(namespace, name string) cache.ListerWatcher {
	return listWatch(f.Client.CoreV1().RESTClient(), "persistentvolumeclaims", namespace, name, nil)
}

// Volumes selects all PVs.
func (f *Framework) Volumes() cache.ListerWatcher {
	return listWatch(f.Client.CoreV1().RESTClient(), "persistentvolumes", "", "", nil)
}

// Volume selects one PV.
func (f *Framework) Volume(name string) cache.ListerWatcher {
	return listWatch(f.Client.CoreV1().RESTClient(), "persistentvolumes", "", name, nil)
}

// StatefulSet selects one StatefulSet (all of the namespace when name is
// empty).
func (f *Framework) StatefulSet(namespace, name string) cache.ListerWatcher {
	return listWatch(f.Client.AppsV1().RESTClient(), "statefulsets", namespace, name, nil)
}

// DaemonSets selects one DaemonSet.
func (f *Framework) DaemonSets(namespace, name string) cache.ListerWatcher {
	return listWatch(f.Client.AppsV1().RESTClient(), "daemonsets", namespace, name, nil)
}

// Deployments selects one Deployment.
func (f *Framework) Deployments(namespace, name string) cache.ListerWatcher {
	return listWatch(f.Client.AppsV1().RESTClient(), "deployments", namespace, name, nil)
}

// Namespaces selects all namespaces.
func (f *Framework) Namespaces() cache.ListerWatcher {
	return listWatch(f.Client.CoreV1().RESTClient(), "namespaces", "", "", nil)
}

// CSINodes selects all CSINodes.
func (f *Framework) CSINodes() cache.ListerWatcher {
	return listWatch(f.Client.StorageV1().RESTClient(), "csinodes", "", "", nil)
}

// Events selects the events about one object (kind and name) in a namespace.
func (f *Framework) Events(namespace, kind, name string) cache.ListerWatcher {
	return cache.NewFilteredListWatchFromClient(f.Client.CoreV1().RESTClient(), "events", namespace,
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.AndSelectors(
				fields.OneTermEqualSelector("involvedObject.kind", kind),
				fields.OneTermEqualSelector("involvedObject.name", name)).String()
		})
}

// WaitForPodReady waits until the pod exists, is not being deleted, and is
// Ready; it returns the pod.
func (f *Framework) WaitForPodReady(ctx context.Context, namespace, name string) (*v1.Pod, error) {
	pod, err := WaitForOne(ctx, f.Pod(namespace, name), &v1.Pod{}, func(p *v1.Pod) (bool, error) {
		return p != nil && p.DeletionTimestamp == nil && PodReady(p), nil
	})
	if err != nil {
		return pod, fmt.Errorf("waiting for pod %s/%s to be Ready: %w", namespace, name, err)
	}
	return pod, nil
}

// WaitForPodGone waits until no pod with that name and uid exists (uid
// empty: none with that name at all).
func (f *Framework) WaitForPodGone(ctx context.Context, namespace, name string, uid string) error {
	_, err := WaitForOne(ctx, f.Pod(namespace, name), &v1.Pod{}, func(p *v1.Pod) (bool, error) {
		return p == nil || (uid != "" && string(p.UID) != uid), nil
	})
	if err != nil {
		return fmt.Errorf("waiting for pod %s/%s to go: %w", namespace, name, err)
	}
	return nil
}

// WaitForStatefulSet waits until the StatefulSet's controller has seen its
// spec and all of its replicas are current and Ready.
func (f *Framework) WaitForStatefulSet(ctx context.Context, namespace, name string) (*appsv1.StatefulSet, error) {
	sts, err := WaitForOne(ctx, f.StatefulSet(namespace, name), &appsv1.StatefulSet{}, func(s *appsv1.StatefulSet) (bool, error) {
		if s == nil || s.Spec.Replicas == nil {
			return false, nil
		}
		want := *s.Spec.Replicas
		st := s.Status
		return st.ObservedGeneration >= s.Generation && st.Replicas == want && st.ReadyReplicas == want &&
			st.UpdatedReplicas == want && st.CurrentRevision == st.UpdateRevision, nil
	})
	if err != nil {
		return sts, fmt.Errorf("waiting for StatefulSet %s/%s to be Ready: %w", namespace, name, err)
	}
	return sts, nil
}

// WaitForEvent waits for an event about the object (kind, name) for which
// match holds, and returns it.
func (f *Framework) WaitForEvent(ctx context.Context, namespace, kind, name string, match func(*v1.Event) bool) (*v1.Event, error) {
	var found *v1.Event
	_, err := WaitFor(ctx, f.Events(namespace, kind, name), &v1.Event{}, func(events []*v1.Event) (bool, error) {
		for _, e := range events {
			if match(e) {
				found = e
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for an event about %s %s/%s: %w", kind, namespace, name, err)
	}
	return found, nil
}

// PodReady reports whether the pod's Ready condition is true.
func PodReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// PodCondition returns the pod's condition of type t, or nil.
func PodCondition(p *v1.Pod, t v1.PodConditionType) *v1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == t {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}
