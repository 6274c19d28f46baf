"""A host's fork server (:mod:`.actor`): it forks the host's domain processes from a zygote
(``actors.domain.zygote``) and relays their messages over Ray, as they are no Ray workers."""
