//! The roots sidecars trust, and replacing the root that signs without a failed handshake.
//!
//! A rotation is three steps, each saved to the store before the next begins:
//!
//! 1. [`CaState::begin_rotation`]: a new root is made and added to the trust bundle, but does
//!    not sign yet. Push the bundle to every sidecar and wait until each has taken it (ACKed):
//!    a peer must trust the new root before it meets a certificate the new root signed.
//! 2. [`CaState::activate`]: the new root signs every certificate from now on. The old root stays
//!    in the bundle, so the certificates it signed keep working while their holders renew at
//!    half-life.
//! 3. [`CaState::finish`]: the old root leaves the bundle. Only once every certificate it signed
//!    has been renewed or has expired, that is at least one full leaf lifetime after step 2
//!    (and after every sidecar that was away has come back or been given up on); sooner, a
//!    sidecar still holding an old-root certificate is refused by its peers.
//!
//! Zero downtime holds because at every moment each certificate in use chains to a root that
//! every sidecar trusts.

use std::fmt;

use super::{Ca, Error, Result};

/// The roots a sidecar trusts, as certificates (no keys), in order: first the root that signs
/// now, then (during a rotation only) the other one: the next root after
/// [`CaState::begin_rotation`], the previous one after [`CaState::activate`].
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<RootCert>,
}

#[derive(Clone, PartialEq, Eq)]
struct RootCert {
    pem: String,
    der: Vec<u8>,
}

impl RootCert {
    fn of(ca: &Ca) -> Self {
        Self { pem: ca.cert_pem().to_owned(), der: ca.cert_der().to_vec() }
    }
}

impl TrustBundle {
    /// The bundle of one root.
    pub fn new(current: &Ca) -> Self {
        Self { roots: vec![RootCert::of(current)] }
    }

    /// The roots' certificates as PEM, the signing one first: one, or two during a rotation.
    pub fn roots(&self) -> impl ExactSizeIterator<Item = &str> {
        self.roots.iter().map(|root| root.pem.as_str())
    }

    /// The same certificates as DER, in the same order.
    pub fn ders(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.roots.iter().map(|root| root.der.as_slice())
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Every root's certificate, concatenated: what a sidecar loads as its trust anchors.
    pub fn pem(&self) -> String {
        self.roots().collect()
    }

    /// Whether `cert_pem` is one of the roots (compared by certificate, so line endings and
    /// text around the PEM block do not matter). False for anything that is not one PEM
    /// certificate.
    pub fn contains(&self, cert_pem: &str) -> bool {
        let Ok(blocks) = pem::parse_many(cert_pem) else { return false };
        match blocks.as_slice() {
            [one] if one.tag() == "CERTIFICATE" => self.contains_der(one.contents()),
            _ => false,
        }
    }

    pub fn contains_der(&self, cert_der: &[u8]) -> bool {
        self.roots.iter().any(|root| root.der == cert_der)
    }

    /// The bundle of these certificates (read back from the store), each one PEM certificate.
    pub(super) fn from_pems(pems: &[String]) -> Result<Self, String> {
        let roots = pems
            .iter()
            .map(|text| match pem::parse_many(text).map_err(|e| e.to_string())?.as_slice() {
                [one] if one.tag() == "CERTIFICATE" => {
                    Ok(RootCert { pem: pem::encode(one), der: one.contents().to_vec() })
                }
                _ => Err("a trust bundle entry is not one PEM certificate".to_owned()),
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { roots })
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustBundle({} roots)", self.roots.len())
    }
}

/// The CA as it is kept in the store: the root that signs, the bundle sidecars trust, and the
/// next root while a rotation is staged. See the module documentation for the order of steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaState {
    active: Ca,
    bundle: TrustBundle,
    staged: Option<Ca>,
}

/// Where a rotation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationPhase {
    /// One root, which signs.
    Idle,
    /// A next root is trusted but does not sign yet.
    Staged,
    /// The new root signs; the previous one is still trusted.
    Activated,
}

/// A step of a rotation, for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationStep {
    Begin,
    Activate,
    Finish,
}

impl CaState {
    /// The state of a CA that has not been rotated.
    pub fn new(active: Ca) -> Self {
        Self { bundle: TrustBundle::new(&active), active, staged: None }
    }

    /// The root that signs.
    pub fn active(&self) -> &Ca {
        &self.active
    }

    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The next root, between [`begin_rotation`](Self::begin_rotation) and
    /// [`activate`](Self::activate).
    pub fn staged(&self) -> Option<&Ca> {
        self.staged.as_ref()
    }

    pub fn phase(&self) -> RotationPhase {
        match (&self.staged, self.bundle.len()) {
            (Some(_), _) => RotationPhase::Staged,
            (None, 1) => RotationPhase::Idle,
            (None, _) => RotationPhase::Activated,
        }
    }

    /// Step 1: makes a new root named like [`Ca::generate`]'s and adds it to the bundle, after
    /// the active one. It does not sign until [`activate`](Self::activate).
    pub fn begin_rotation(&mut self, name: &str) -> Result<()> {
        self.expect(RotationStep::Begin, RotationPhase::Idle)?;
        self.stage(Ca::generate(name)?)
    }

    /// Step 1 with a root the operator supplies.
    pub fn stage(&mut self, next: Ca) -> Result<()> {
        self.expect(RotationStep::Begin, RotationPhase::Idle)?;
        self.bundle.roots.push(RootCert::of(&next));
        self.staged = Some(next);
        Ok(())
    }

    /// Step 2: the staged root signs from now on; the old one stays in the bundle, second.
    pub fn activate(&mut self) -> Result<()> {
        self.expect(RotationStep::Activate, RotationPhase::Staged)?;
        let next = self.staged.take().expect("a staged rotation has a next root");
        let previous = std::mem::replace(&mut self.active, next);
        self.bundle.roots.reverse();
        debug_assert!(self.bundle.contains_der(previous.cert_der()));
        Ok(())
    }

    /// Step 3: the previous root leaves the bundle.
    pub fn finish(&mut self) -> Result<()> {
        self.expect(RotationStep::Finish, RotationPhase::Activated)?;
        self.bundle.roots.truncate(1);
        Ok(())
    }

    /// Builds a state read back from the store, checking that its parts fit together.
    pub(super) fn from_parts(active: Ca, bundle: TrustBundle, staged: Option<Ca>) -> Result<Self, String> {
        let is = |root: &RootCert, ca: &Ca| root.der == ca.cert_der();
        let fits = match (bundle.roots.as_slice(), &staged) {
            ([first], None) | ([first, _], None) => is(first, &active),
            ([first, second], Some(next)) => is(first, &active) && is(second, next),
            _ => false,
        };
        if !fits {
            return Err(format!(
                "the trust bundle ({} roots) does not start with the active root{}",
                bundle.len(),
                if staged.is_some() { " followed by the staged one" } else { "" }
            ));
        }
        Ok(Self { active, bundle, staged })
    }

    fn expect(&self, step: RotationStep, phase: RotationPhase) -> Result<()> {
        let now = self.phase();
        if now == phase {
            return Ok(());
        }
        let next = match now {
            RotationPhase::Idle => "begin a rotation first",
            RotationPhase::Staged => {
                "activate the staged root once every sidecar trusts it, or wait for that rotation"
            }
            RotationPhase::Activated => {
                "finish the rotation once every certificate the previous root signed has been renewed"
            }
        };
        Err(Error::RotationOutOfOrder { step, phase: now, next })
    }
}

impl fmt::Display for RotationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idle => "no rotation is under way",
            Self::Staged => "a next root is staged but does not sign yet",
            Self::Activated => "the previous root is still trusted",
        })
    }
}

impl fmt::Display for RotationStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Begin => "begin a rotation",
            Self::Activate => "activate the next root",
            Self::Finish => "finish the rotation",
        })
    }
}
