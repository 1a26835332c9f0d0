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
func (pl *placer) addHandlers(logger klog.Logger, s informerSet) ([]handlerReg, error) {
	var regs []handlerReg
	for _, h := range []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		{s.claims, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { pl.claimChanged(nil, obj) },
			UpdateFunc: pl.claimChanged,
			DeleteFunc: pl.claimDeleted,
		}},
		{s.nodes, cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { pl.enqueueWaiting(logger) },
			UpdateFunc: func(oldObj, newObj any) {
				if nodeChanged(oldObj, newObj) {
					pl.enqueueWaiting(logger)
				}
			},
		}},
		{s.csiNodes, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { pl.enqueueWaiting(logger) },
			UpdateFunc: func(any, any) { pl.enqueueWaiting(logger) },
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
func (pl *placer) claimChanged(oldObj, newObj any) {
	claim, ok := newObj.(*v1.PersistentVolumeClaim)
	if !ok {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(claim)
	if err != nil {
		return
	}
	if claim.Spec.VolumeName != "" {
		pl.forget(key)
		return
	}
	if old, ok := oldObj.(*v1.PersistentVolumeClaim); ok {
		if prev := selectedNode(old); prev != "" && selectedNode(claim) == "" {
			pl.mu.Lock()
			if pl.refused[key] == nil {
				pl.refused[key] = sets.New[string]()
			}
			pl.refused[key].Insert(prev)
			pl.mu.Unlock()
		}
	}
	if pl.classToPlace(claim) != nil {
		pl.queue.Add(key)
	}
}

func (pl *placer) claimDeleted(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		pl.forget(key)
	}
}

// enqueueWaiting queues every claim still waiting for a node: a node became
// usable, so one that found none may find one now.
func (pl *placer) enqueueWaiting(logger klog.Logger) {
	claims, err := pl.claims.List(labels.Everything())
	if err != nil {
		logger.Error(err, "Listing claims")
		return
	}
	for _, claim := range claims {
		if pl.classToPlace(claim) == nil {
			continue
		}
		if key, err := cache.MetaNamespaceKeyFunc(claim); err == nil {
			pl.queue.Add(key)
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
