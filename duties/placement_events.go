package duties

import (
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/stickyvol/stickyvol/provisioner"
)

type handlerReg struct {
	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
}

// addHandlers makes the duty react to claims that need a node and to nodes
// that become able to take them. It returns what it registered, also on
// error, so the caller can remove it.
func (tm *term) addHandlers(logger klog.Logger) ([]handlerReg, error) {
	s := tm.informers
	var regs []handlerReg
	for _, h := range []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		{s.claims, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { tm.claimChanged(nil, obj) },
			UpdateFunc: tm.claimChanged,
			DeleteFunc: tm.claimDeleted,
		}},
		// Nodes and CSINodes already known when the term starts change
		// nothing: the claims' own initial list queues every waiting claim.
		{s.nodes, cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: func(_ any, initial bool) {
				if !initial {
					tm.enqueueWaiting(logger)
				}
			},
			UpdateFunc: func(oldObj, newObj any) {
				if nodeChanged(oldObj, newObj) {
					tm.enqueueWaiting(logger)
				}
			},
		}},
		{s.csiNodes, cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: func(_ any, initial bool) {
				if !initial {
					tm.enqueueWaiting(logger)
				}
			},
			UpdateFunc: func(any, any) { tm.enqueueWaiting(logger) },
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
func (tm *term) claimChanged(oldObj, newObj any) {
	claim, ok := newObj.(*v1.PersistentVolumeClaim)
	if !ok {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(claim)
	if err != nil {
		return
	}
	if claim.Spec.VolumeName != "" {
		tm.forget(key)
		return
	}
	if old, ok := oldObj.(*v1.PersistentVolumeClaim); ok {
		if prev := provisioner.SelectedNode(old); prev != "" && provisioner.SelectedNode(claim) == "" {
			tm.mu.Lock()
			if tm.refused[key] == nil {
				tm.refused[key] = sets.New[string]()
			}
			tm.refused[key].Insert(prev)
			tm.mu.Unlock()
		}
	}
	if tm.classToPlace(claim) != nil {
		tm.queue.Add(key)
	}
}

func (tm *term) claimDeleted(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		tm.forget(key)
	}
}

// enqueueWaiting queues every claim still waiting for a node: a node may
// have become usable, so a claim that found none may find one now.
func (tm *term) enqueueWaiting(logger klog.Logger) {
	claims, err := tm.claims.List(labels.Everything())
	if err != nil {
		logger.Error(err, "Listing claims")
		return
	}
	for _, claim := range claims {
		if tm.classToPlace(claim) == nil {
			continue
		}
		if key, err := cache.MetaNamespaceKeyFunc(claim); err == nil {
			tm.queue.Add(key)
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
