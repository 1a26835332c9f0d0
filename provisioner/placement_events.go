package provisioner

import (
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

type handlerReg struct {
	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
}

// addHandlers makes the duty react to claims that need a node and to nodes
// that become able to take them. It returns what it registered, also on
// error, so the caller can remove it.
func (t *term) addHandlers(logger klog.Logger) ([]handlerReg, error) {
	s := t.informers
	var regs []handlerReg
	for _, h := range []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		{s.claims, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { t.claimChanged(nil, obj) },
			UpdateFunc: t.claimChanged,
			DeleteFunc: t.claimDeleted,
		}},
		{s.nodes, cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { t.enqueueWaiting(logger) },
			UpdateFunc: func(oldObj, newObj any) {
				if nodeChanged(oldObj, newObj) {
					t.enqueueWaiting(logger)
				}
			},
		}},
		{s.csiNodes, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { t.enqueueWaiting(logger) },
			UpdateFunc: func(any, any) { t.enqueueWaiting(logger) },
		}},
	} {
		reg, err := h.informer.AddEventHandler(h.handler)
		if err != nil {
			return regs, err
		}
		regs = append(regs, handlerReg{h.informer, reg})
	}
	return regs, nil
}

func removeHandlers(logger klog.Logger, regs []handlerReg) {
	for _, r := range regs {
		if err := r.informer.RemoveEventHandler(r.reg); err != nil {
			logger.Error(err, "Removing an event handler")
		}
	}
}

// claimChanged queues claims that need a node. When the provisioner of the
// chosen node sent the claim back (the library removes the selected-node
// annotation on ProvisioningReschedule), it remembers that node as refused
// for this claim.
func (t *term) claimChanged(oldObj, newObj any) {
	claim, ok := newObj.(*v1.PersistentVolumeClaim)
	if !ok {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(claim)
	if err != nil {
		return
	}
	if claim.Spec.VolumeName != "" {
		t.forget(key)
		return
	}
	if old, ok := oldObj.(*v1.PersistentVolumeClaim); ok {
		if prev := selectedNode(old); prev != "" && selectedNode(claim) == "" {
			t.mu.Lock()
			if t.refused[key] == nil {
				t.refused[key] = sets.New[string]()
			}
			t.refused[key].Insert(prev)
			t.mu.Unlock()
		}
	}
	if t.classToPlace(claim) != nil {
		t.queue.Add(key)
	}
}

func (t *term) claimDeleted(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		t.forget(key)
	}
}

// enqueueWaiting queues every claim still waiting for a node: a node became
// usable, so one that found none may find one now.
func (t *term) enqueueWaiting(logger klog.Logger) {
	claims, err := t.claims.List(labels.Everything())
	if err != nil {
		logger.Error(err, "Listing claims")
		return
	}
	for _, claim := range claims {
		if t.classToPlace(claim) == nil {
			continue
		}
		if key, err := cache.MetaNamespaceKeyFunc(claim); err == nil {
			t.queue.Add(key)
		}
	}
}

// nodeChanged reports changes that can make a node usable or not: readiness,
// cordoning, labels (allowedTopologies). Status heartbeats are ignored.
func nodeChanged(oldObj, newObj any) bool {
	old, ok1 := oldObj.(*v1.Node)
	cur, ok2 := newObj.(*v1.Node)
	if !ok1 || !ok2 {
		return true
	}
	return nodeReady(old) != nodeReady(cur) || old.Spec.Unschedulable != cur.Spec.Unschedulable ||
		!labels.Equals(old.Labels, cur.Labels)
}
