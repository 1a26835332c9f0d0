package provisioner

import (
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/stickyvol/stickyvol/driver"
)

// provisioningState tells the library what a failed CreateVolume means for
// the claim, the way external-provisioner's checkError does.
//
//   - ResourceExhausted: the node has no room. Nothing runs on, and another
//     node may have room: ProvisioningReschedule, on which the library
//     deletes the claim's selected-node annotation so that the scheduler (or
//     the placement duty, for Immediate classes) picks again. The library
//     only does this for claims that carry the annotation, which every claim
//     this provisioner accepts does.
//   - Canceled, DeadlineExceeded, Unavailable, Aborted: the call may still
//     be running in the driver (Aborted is the driver saying "an operation
//     on this volume is in progress"): ProvisioningInBackground. The library
//     then keeps the claim in its in-progress set and calls Provision again
//     even if the claim is deleted meanwhile, so a volume made late is not
//     leaked.
//   - Any other code: the driver looked at the request and said no, nothing
//     runs on: ProvisioningFinished. For InvalidArgument the library also
//     delays further retries until the StorageClass changes.
//   - An error without a gRPC status never reached the driver's answer (a
//     broken connection before the reply, for instance). Whether the
//     volume is being made is unknown, so it counts as in progress.
func provisioningState(err error) controller.ProvisioningState {
	st, ok := status.FromError(err)
	if !ok {
		return controller.ProvisioningInBackground
	}
	switch st.Code() {
	case codes.ResourceExhausted:
		return controller.ProvisioningReschedule
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.Aborted:
		return controller.ProvisioningInBackground
	default:
		return controller.ProvisioningFinished
	}
}

// explainCreateError turns a CreateVolume error into the text of the
// claim's ProvisioningFailed event: what happened and what to do, then the
// driver's own words. The gRPC status stays wrapped, so the library still
// sees the code.
func (p *Provisioner) explainCreateError(err error) error {
	switch status.Code(err) {
	case codes.ResourceExhausted:
		if pool, ok := missingPool(status.Convert(err).Message()); ok {
			return fmt.Errorf("node %q has no pool %s, which the class asks for with %s: %s, so the claim goes back "+
				"to the scheduler to pick a node that has it (to add it to this node, give its stickyvol --pool %s=<path>): %w",
				p.nodeName, pool, driver.ParamPool, pool, pool, err)
		}
		if strings.Contains(status.Convert(err).Message(), driver.NotEnforcedMessage) {
			return fmt.Errorf("node %q can only account volume sizes, not enforce them, and the class asks %s: %s, "+
				"so the claim goes back to the scheduler to pick another node (one whose data root is btrfs): %w",
				p.nodeName, driver.ParamSizeEnforcement, driver.SizeEnforcementRequired, err)
		}
		return fmt.Errorf("node %q has no room for this volume, so the claim goes back to the scheduler "+
			"to pick another node (to make room on that node, delete claims no longer needed or raise "+
			"the --capacity of stickyvol there): %w", p.nodeName, err)
	case codes.InvalidArgument:
		return fmt.Errorf("the stickyvol driver on node %q refused the request; fix the StorageClass "+
			"parameters or the claim: %w", p.nodeName, err)
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.Aborted:
		return fmt.Errorf("the stickyvol driver on node %q did not answer in time, retrying "+
			"(if this persists, check the stickyvol pod on that node): %w", p.nodeName, err)
	default:
		return fmt.Errorf("creating the volume on node %q failed (the stickyvol logs on that node "+
			"tell more): %w", p.nodeName, err)
	}
}

// missingPool returns the pool named in a CreateVolume refusal that starts
// with driver.NoPoolMessage ("this node has no pool NAME: ...").
func missingPool(msg string) (string, bool) {
	_, rest, ok := strings.Cut(msg, driver.NoPoolMessage+" ")
	if !ok {
		return "", false
	}
	pool, _, _ := strings.Cut(rest, ":")
	return pool, pool != ""
}
