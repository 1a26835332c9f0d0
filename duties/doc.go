// Package duties holds the cluster duties: the work no single node owns,
// done by whichever replica of `stickyvol controller` holds the Lease
// (RunLeaderElected): Placement, which picks a node for each claim of an
// Immediate-binding stickyvol class, and NodeLoss, which deals with the
// claims, PVs and CSIStorageCapacity objects of a deleted node. They run apart from the node agents so
// that no agent needs rights over another node's objects. The provisioning
// of a node's own claims stays in package provisioner, in every agent.
//
// A duty is written so that a change of leader cannot make two of them act
// at once (see RunLeaderElected) and so that each of its writes is
// conditioned on the object it read (resourceVersion preconditions): a write
// based on a stale read fails instead of undoing another leader's work.
package duties
