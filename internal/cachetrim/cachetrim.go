// Package cachetrim holds the transform functions (cache.TransformFunc) of
// stickyvol's informers: what they drop from an object before it is cached,
// so that an agent's memory grows with what it reads, not with everything
// the API server keeps.
//
// A transform must never drop what some reader of the cache looks at, nor
// what a write built from a cached object would then lose. The agent's
// readers of claims and PVs are the provisioning library (spec, status,
// annotations, finalizers, UID), the Provisioner and the hand-over view
// (claims: spec, annotations; StorageClasses: all of it), the reconciler (PVs: CSI
// source, node affinity, claimRef, timestamps), the resizer (claims: spec,
// status, annotations; PVs: CSI source, claimRef, capacity) and the
// capacity publisher (StorageClasses). Its writes from cached objects are
// an Update of a claim (the library's reschedule: metadata and spec go to
// the API server as cached, so none of them may be dropped), and patches of PVs
// computed as the difference between two versions of the same cached
// object (the library's finalizer patch, which carries only the finalizers
// however little the cache holds). The resizer reads a claim afresh from
// the API server before it writes its status.
//
// So claims, PVs and StorageClasses lose only their managedFields: the
// field managers' records, several hundred bytes to a few KiB per object,
// which no stickyvol code reads. An Update that carries no managedFields
// (nil, or an empty list) leaves the stored ones as they are: the API
// server resets them only when asked with a list holding one empty entry,
// so that clients unaware of the field cannot wipe it.
package cachetrim

import (
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ManagedFields drops an object's managedFields. Objects that are not
// Kubernetes objects (a tombstone) pass unchanged.
func ManagedFields(obj any) (any, error) {
	if o, ok := obj.(metav1.Object); ok {
		o.SetManagedFields(nil)
	}
	return obj, nil
}

// Node keeps only a Node's object metadata, without its managedFields: the
// provisioner asks only whether its own Node exists, and no stickyvol code
// writes a Node. Its status alone (the images the node holds, its
// conditions) is kilobytes.
func Node(obj any) (any, error) {
	node, ok := obj.(*v1.Node)
	if !ok {
		return obj, nil
	}
	node.ManagedFields = nil
	node.Spec = v1.NodeSpec{}
	node.Status = v1.NodeStatus{}
	return node, nil
}
