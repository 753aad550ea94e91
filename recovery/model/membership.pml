/* Phoenix's membership and chain fail-over protocol (recovery/detector.cc, recovery/view.cc,
 * runtime/ps/server.cc), as a Promela model for spin. What it keeps and what it abstracts away:
 * recovery/model/README.md. `make model-check` runs it (apps/scripts/model_check.sh).
 *
 * Ranks: 0 = head of the shard, 1 = its replica (the chain's tail), 2 = a spare, 3 = the worker.
 * Every rank runs the failure detector; the acting coordinator is the lowest rank of its view
 * that it does not suspect. Up to MAXCRASH ranks crash (servers and the spare), up to
 * MAXSUSPECT live ranks are suspected falsely (a freeze or a cut link looks like a death), and
 * up to MAXLOSS view messages are lost; every channel delivers in any order.
 *
 * Build switches (spin -D...): OLD_EPOCHS models the code before the model check (a view's
 * epoch is the previous one + 1 whoever issues it, and a coordinator resends its view only to
 * ranks the view excludes); without it, the code as it is now (epochs unique per issuer,
 * views resent to any rank whose heartbeat carries an older epoch).
 */
#define N 4
#define WORKER 3
#define SPARE 2
#define NONE 255
#ifndef MAXCRASH
#define MAXCRASH 2
#endif
#ifndef MAXSUSPECT
#define MAXSUSPECT 1
#endif
#ifndef MAXLOSS
#define MAXLOSS 1
#endif
#ifndef NUPD
#define NUPD 1
#endif

typedef View {
  byte epoch;
  byte alive;   /* bit r: rank r is a member */
  byte head;    /* the shard's head, NONE: lost */
  byte tail;    /* its replica, NONE: no replica */
};

View view[N];
bool crashed[N];
bool fenced[N];
byte suspects[N];          /* bit r of suspects[m]: rank m suspects rank r */
byte applied[N];           /* bit u: update u is in this server's state */
bool hasState[N];          /* a tail that joined has the whole state (the spare's join) */
byte acked;                /* bit u: the worker got the acknowledgement of update u */
byte ncrash, nsuspect, nloss;

chan viewch[N] = [3] of { byte, byte, byte, byte };   /* epoch, alive, head, tail */
/* data path: push (worker -> head), fwd (head -> tail), ack (tail -> head, head -> worker) */
chan push[N] = [2] of { byte, byte };                 /* update, epoch of the sender's view */
chan fwd[N] = [2] of { byte, byte, byte };            /* update, epoch, from */
chan ack[N] = [2] of { byte, byte, byte };            /* update, epoch, from (tail -> head) */
chan wack = [2] of { byte, byte, byte };              /* update, epoch, from (head -> worker) */

#define member(v, r) (((v.alive) >> (r)) & 1)
#define live(r) (!crashed[r] && !fenced[r])

/* Is (e2) newer than (e1)? */
#define newer(e2, e1) ((e2) > (e1))

inline count(mask, n) {
  n = ((mask) & 1) + (((mask) >> 1) & 1) + (((mask) >> 2) & 1) + (((mask) >> 3) & 1)
}

/* Installs a view at rank m (the detector's install(); a view that excludes m fences it). */
inline install(m, e, al, hd, tl) {
  if
  :: ((al >> m) & 1) == 0 -> fenced[m] = true
  :: else ->
     if
     /* a tail that was not in the chain before joins: it holds nothing until the head's state */
     :: tl == m && view[m].tail != m && view[m].head != m -> hasState[m] = false
     :: else -> skip
     fi;
     /* a promoted replica keeps its state; a spare that becomes head without the state is
        the documented "served its initial weights" case: the model gives it none */
     view[m].epoch = e; view[m].alive = al; view[m].head = hd; view[m].tail = tl
  fi
}

inline sendView(to, e, al, hd, tl) {
  if
  :: full(viewch[to]) -> skip                      /* a full channel: abandoned (lost) */
  :: nfull(viewch[to]) && nloss < MAXLOSS -> nloss++  /* lost on the way */
  :: nfull(viewch[to]) -> viewch[to] ! e, al, hd, tl
  fi
}

#define sus(m, i) ((suspects[m] >> (i)) & 1)
#define canSus(m, i) ((i) != (m) && member(view[m], i) && !sus(m, i) && \
                      (crashed[i] || fenced[i] || (live(i) && nsuspect < MAXSUSPECT)))
#define anySus(m) (canSus(m, 0) || canSus(m, 1) || canSus(m, 2) || canSus(m, 3))
#define pc(x) (((x) & 1) + (((x) >> 1) & 1) + (((x) >> 2) & 1) + (((x) >> 3) & 1))
#define deadOf(m) (suspects[m] & view[m].alive)
/* rank i is not, as m believes, a live member (so it cannot be m's coordinator) */
#define gone(m, i) (!(member(view[m], i) && !((deadOf(m) >> (i)) & 1)))
#define isCoord(m) ((m) == 0 || (gone(m, 0) && ((m) == 1 || (gone(m, 1) && ((m) == 2 || gone(m, 2))))))
#define reach(m) (pc(view[m].alive) - pc(deadOf(m)))
#define majority(m) (2 * reach(m) > pc(view[m].alive) || \
                     (2 * reach(m) == pc(view[m].alive) && member(view[m], 0) && !(deadOf(m) & 1)))
#ifdef OLD_RESEND
#define behind(m, s) ((s) != (m) && live(s) && view[s].epoch < view[m].epoch && len(viewch[s]) == 0 && \
                      !member(view[m], s))
#else
#define behind(m, s) ((s) != (m) && live(s) && view[s].epoch < view[m].epoch && len(viewch[s]) == 0)
#endif
/* a member m hears from (not suspected) holds a newer view: m is behind and waits for it
   (heartbeats carry their sender's epoch; before the model check: not looked at) */
#ifdef OLD_AHEAD
#define anyAhead(m) false
#else
#define ahead(m, s) ((s) != (m) && member(view[m], s) && !sus(m, s) && live(s) && view[s].epoch > view[m].epoch)
#define anyAhead(m) (ahead(m, 0) || ahead(m, 1) || ahead(m, 2) || ahead(m, 3))
#endif
#define anyBehind(m) (behind(m, 0) || behind(m, 1) || behind(m, 2) || behind(m, 3))

proctype Rank(byte me) {
  byte e, al, hd, tl, u, src, i, ne, nal, nhd, ntl;
end:
  do
  :: crashed[me] || fenced[me] -> break

  /* a view arrives: a newer one is installed (an equal epoch that excludes this rank is the
     other side of a cut; the majority rule let only one side issue it) */
  :: atomic {
       viewch[me] ?? e, al, hd, tl ->
       if
       :: live(me) && e > view[me].epoch -> install(me, e, al, hd, tl)
       :: live(me) && e == view[me].epoch && ((al >> me) & 1) == 0 -> fenced[me] = true
       :: else -> skip
       fi;
       e = 0; al = 0; hd = 0; tl = 0
     }

  /* the detector suspects a member: a crashed one (a real death) or a live one (false) */
  :: atomic {
       live(me) && anySus(me) ->
       i = 0;
       do
       :: canSus(me, i) -> break
       :: else -> i++
       od;
       if
       :: live(i) -> nsuspect++
       :: else -> skip
       fi;
       suspects[me] = suspects[me] | (1 << i);
       i = 0
     }

  /* the acting coordinator (the lowest member it does not suspect: itself) issues the next
     view while it hears a majority of the members (a tie: the half with the lowest member) */
  :: atomic {
       live(me) && isCoord(me) && deadOf(me) != 0 && majority(me) && !anyAhead(me) ->
#ifdef OLD_EPOCHS
       ne = view[me].epoch + 1;
#else
       /* unique per issuer: the next multiple of N above the current epoch, plus the issuer */
       ne = (view[me].epoch / N + 1) * N + me;
#endif
       nal = view[me].alive & ~deadOf(me);
       nhd = view[me].head; ntl = view[me].tail;
       if
       :: ntl != NONE && ((nal >> ntl) & 1) == 0 -> ntl = NONE
       :: else -> skip
       fi;
       if
       :: nhd != NONE && ((nal >> nhd) & 1) == 0 ->
          if
          :: ntl != NONE -> nhd = ntl; ntl = NONE      /* chain: the replica is promoted */
          :: else -> nhd = NONE                        /* no copy left: the shard is lost */
          fi
       :: else -> skip
       fi;
       /* a free spare joins as the new tail (it gets the head's state before it acknowledges) */
       if
       :: nhd != NONE && ntl == NONE && ((nal >> SPARE) & 1) && nhd != SPARE -> ntl = SPARE
       :: else -> skip
       fi;
       install(me, ne, nal, nhd, ntl);
       src = 0;
       do
       :: src < N -> if
                     :: src != me && ((nal >> src) & 1) -> sendView(src, ne, nal, nhd, ntl)
                     :: else -> skip
                     fi; src++
       :: else -> break
       od;
       src = 0; ne = 0; nal = 0; nhd = 0; ntl = 0
     }

  /* a heartbeat of an older epoch is answered with the view (fencing, and catching up after
     a lost view; before the model check: only to a rank the view excludes) */
  :: atomic {
       live(me) && anyBehind(me) ->
       src = 0;
       do
       :: behind(me, src) -> break
       :: else -> src++
       od;
       e = view[me].epoch; al = view[me].alive; hd = view[me].head; tl = view[me].tail;
       sendView(src, e, al, hd, tl);
       src = 0; e = 0; al = 0; hd = 0; tl = 0
     }

  /* the head: a push of its epoch or later is applied and forwarded to the tail (acknowledged
     only once the tail acknowledged it: chain sync); without a tail it is acknowledged */
  :: atomic {
       push[me] ?? u, e ->
       if
       :: live(me) && view[me].head == me && e >= view[me].epoch ->
          applied[me] = applied[me] | (1 << u);
          if
          :: view[me].tail != NONE -> if
                                      :: full(fwd[view[me].tail]) -> skip
                                      :: nfull(fwd[view[me].tail]) -> fwd[view[me].tail] ! u, view[me].epoch, me
                                      fi
          :: else -> if
                     :: full(wack) -> skip
                     :: nfull(wack) -> wack ! u, view[me].epoch, me
                     fi
          fi
       :: else -> skip          /* an older epoch's message is rejected */
       fi;
       u = 0; e = 0; src = 0
     }
  /* the tail: a forward from its view's head, of its epoch or later, once it holds the state */
  :: atomic {
       fwd[me] ?? u, e, src ->
       if
       :: live(me) && view[me].tail == me && view[me].head == src && e >= view[me].epoch && hasState[me] ->
          applied[me] = applied[me] | (1 << u);
          if
          :: full(ack[src]) -> skip
          :: nfull(ack[src]) -> ack[src] ! u, e, me
          fi
       :: else -> skip
       fi;
       u = 0; e = 0; src = 0
     }
  /* a joining tail receives the whole state from the head of the same view */
  :: atomic {
       live(me) && view[me].tail == me && !hasState[me] && view[me].head != NONE &&
       live(view[me].head) && view[view[me].head].epoch == view[me].epoch &&
       view[view[me].head].tail == me ->
       applied[me] = applied[me] | applied[view[me].head]; hasState[me] = true
     }
  /* the head relays its tail's acknowledgement to the worker */
  :: atomic {
       ack[me] ?? u, e, src ->
       if
       :: live(me) && view[me].head == me && view[me].tail == src && e == view[me].epoch ->
          if
          :: full(wack) -> skip
          :: nfull(wack) -> wack ! u, view[me].epoch, me
          fi
       :: else -> skip
       fi;
       u = 0; e = 0; src = 0
     }
  od
}

/* The worker: pushes NUPD updates in turn to the head of its view (rank 3's detector installs
   the views), again after each view change, until that head acknowledges (the
   acknowledgement must come from the head of its view, of its epoch). */
proctype Worker() {
  byte u = 0, e, src, sentAt = NONE, x;
end:
  do
  :: atomic {
       u < NUPD && sentAt != view[WORKER].epoch && view[WORKER].head != NONE && live(WORKER) &&
       nfull(push[view[WORKER].head]) ->
       push[view[WORKER].head] ! u, view[WORKER].epoch; sentAt = view[WORKER].epoch
     }
  :: atomic {
       wack ?? x, e, src ->
       if
       :: x == u && src == view[WORKER].head && e == view[WORKER].epoch ->
          acked = acked | (1 << u); u++; sentAt = NONE
       :: else -> skip
       fi;
       x = 0; e = 0; src = 0
     }
  od
}

/* Crashes: a server or the spare, at any time, up to MAXCRASH (the worker stays: a job
   without its worker has no acknowledged update to lose). */
active proctype Chaos() {
  byte r;
end:
  do
  :: atomic {
       ncrash < MAXCRASH ->
       if
       :: !crashed[0] -> r = 0
       :: !crashed[1] -> r = 1
       :: !crashed[2] -> r = 2
       fi;
       crashed[r] = true; ncrash++
     }
  :: break
  od
}

/* P1, in every reachable state: no shard has two heads in one epoch (two live ranks acting as
   head hold views of different epochs). */
#define headAt(p) (live(p) && view[p].head == (p))
#define twoHeads(p, q) (headAt(p) && headAt(q) && view[p].epoch == view[q].epoch)
active proctype TwoHeads() {
end:
  atomic { (twoHeads(0, 1) || twoHeads(0, 2) || twoHeads(1, 2)) -> assert(false) }
}

/* P2 and P3, once nothing can move any more (spin's timeout): every survivor holds the same
   view; and the head it names, once it holds the state, has every acknowledged update
   (chain sync loses none) unless every copy of the shard died (documented as lost). */
#define sameView(p, q) (view[p].epoch == view[q].epoch && view[p].alive == view[q].alive && \
                        view[p].head == view[q].head && view[p].tail == view[q].tail)
#define agree(p, q) (!live(p) || !live(q) || sameView(p, q))
active proctype Quiescence() {
  byte h;
  timeout ->
  atomic {
    assert(agree(0, 1) && agree(0, 2) && agree(0, 3) && agree(1, 2) && agree(1, 3) && agree(2, 3));
    h = view[WORKER].head;
    if
    :: h != NONE && live(h) && hasState[h] -> assert((applied[h] & acked) == acked)
    :: else -> skip
    fi
  }
}

init {
  byte r;
  atomic {
    r = 0;
    do
    :: r < N -> view[r].epoch = 0; view[r].alive = 15; view[r].head = 0; view[r].tail = 1;
                hasState[r] = true; r++
    :: else -> break
    od;
    run Rank(0); run Rank(1); run Rank(2); run Rank(3); run Worker()
  }
}
