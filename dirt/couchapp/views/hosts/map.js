function (doc) {
  if (doc.type === 'host') {
    emit(doc.name, {platform: doc.platform, labels: doc.labels, enabled: doc.enabled,
                    alive: doc.alive, last_seen: doc.last_seen, reason: doc.reason});
  }
}
