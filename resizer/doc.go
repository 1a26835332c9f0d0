// Package resizer grows the volumes of one node when their claims ask for
// more: what the external-resizer sidecar does for a cluster-wide driver,
// done by each node's agent for its own volumes only.
//
// # Why not external-resizer
//
// github.com/kubernetes-csi/external-resizer/v2 (v2.3.0) imports cleanly
// with this module's Kubernetes libraries, and its Resizer interface could
// be made to refuse other nodes' PVs. It is not used because it is a
// sidecar's code, not a library: its packages carry no API promise, its
// controller takes eight positional parameters and makes its own event
// broadcaster, its features package registers feature gates in
// k8s.io/apiserver's global gate from init, it logs through klog's global
// functions and patches with context.TODO() (no contextual logging, no
// cancellation), and its workers outlive Run unless an alpha feature gate
// is on, while the agent must know that no ControllerExpandVolume is in
// flight before it stops its driver. It would also bring CSI migration
// (k8s.io/csi-translation-lib), a second gRPC connection with OpenTelemetry
// instrumentation, and a pod informer this driver does not need: about 35
// packages, for a state machine that fits in two files here. What this
// package keeps from it is the contract with the rest of Kubernetes: the
// claim's status fields, condition types and event reasons.
//
// # The state machine
//
// A claim is this node's to grow when it is Bound to a PV of the driver
// whose node affinity names this node, its StorageClass allows expansion,
// and its volume.kubernetes.io/selected-node annotation names this node
// (the admission policy lets an agent write the status of such claims
// only; every claim the agent provisioned carries it). The claim's status
// says where it is, so an agent that restarts carries on from there:
//
//	no resize status, request <= capacity     nothing to do (shrinking is
//	                                          refused by the API server)
//	no resize status, request > capacity      start: mark, then expand
//	ControllerResizeInProgress                expand again: to the size in
//	                                          allocatedResources, or to the
//	                                          request once the driver has
//	                                          refused the last try outright
//	ControllerResizeInfeasible                nothing until the request
//	                                          differs from allocatedResources
//	NodeResize*                               kubelet's; left alone
//
// Mark: allocatedResourceStatuses[storage] = ControllerResizeInProgress,
// allocatedResources[storage] = the size asked for, a Resizing condition, a
// Normal Resizing event. Expand: ControllerExpandVolume over the driver's
// socket; then the PV's spec.capacity becomes the size the driver reports,
// and the claim's status.capacity too, with the resize status and
// conditions cleared, the annotation
// volume.kubernetes.io/node-expansion-not-required set (kubelet then skips
// NodeExpandVolume) and a Normal VolumeResizeSuccessful event. A driver
// that asked for a node step would leave NodeResizePending and a
// FileSystemResizePending condition instead, for kubelet.
//
// A failure is a Warning VolumeResizeFailed event with the driver's message
// and a ControllerResizeError condition. InvalidArgument, OutOfRange and
// NotFound cannot succeed by trying again: the status becomes
// ControllerResizeInfeasible and nothing is retried until the user changes
// the request (a smaller one recovers, as KEP-1790 has it). Anything else,
// such as ResourceExhausted (the node has no room), keeps
// ControllerResizeInProgress and is retried with per-claim exponential
// backoff. The driver never shrinks a volume and answers an expansion to
// less than its size with the size it has, so asking again is always safe.
package resizer
