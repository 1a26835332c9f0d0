package provisioner

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/utils/lru"
)

// refusals remembers the claims this node refused for good (a refusal that
// no retry can change: an access mode, a data source, a size, a parameter
// the driver rejects), with the versions of the claim and of its class that
// were refused.
//
// Why: the library requeues every failed Provision with the per-claim
// exponential backoff (1 s doubling to 5 min here, see NewController) and
// writes a ProvisioningFailed event each time, forever: 5 events in a refused
// claim's first 30 s, then one every 5 minutes. For a refusal the retry can
// only repeat itself. ShouldProvision says no to a repeat, which the library
// takes as "not mine": no event, no requeue. So a claim gets one Warning
// event per change of the claim or its class, and a change (the user fixes
// the claim, or the class) is provisioned afresh: the informers deliver a
// changed claim at once, and the library's resync every DefaultResyncPeriod
// replays claims whose class changed.
type refusals struct {
	// cache maps a claim's UID to the refusal's key. Bounded: a claim
	// forgotten early is refused once more, with one more event.
	cache *lru.Cache
}

// maxRefusals bounds the memory of refusals.
const maxRefusals = 10000

func newRefusals() *refusals { return &refusals{cache: lru.New(maxRefusals)} }

// refusalKey is what must change for a refused claim to be tried again.
type refusalKey struct{ claimVersion, classVersion string }

func keyOf(claim *v1.PersistentVolumeClaim, class *storagev1.StorageClass) refusalKey {
	k := refusalKey{claimVersion: claim.ResourceVersion}
	if class != nil {
		k.classVersion = class.ResourceVersion
	}
	return k
}

// seen tells whether this version of the claim and class was refused.
func (r *refusals) seen(claim *v1.PersistentVolumeClaim, class *storagev1.StorageClass) bool {
	k, ok := r.cache.Get(claim.UID)
	return ok && k == keyOf(claim, class)
}

// add remembers a refusal.
func (r *refusals) add(claim *v1.PersistentVolumeClaim, class *storagev1.StorageClass) {
	r.cache.Add(claim.UID, keyOf(claim, class))
}

// finalRefusal tells whether the driver's answer to CreateVolume refuses the
// request itself, so a retry of the same request gets the same answer.
func finalRefusal(err error) bool {
	return status.Code(err) == codes.InvalidArgument
}
